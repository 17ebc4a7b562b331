// The models with gates: gates of exactly 1 reproduce the ungated (teacher) outputs bit for bit, in
// fp32 and bf16, for LLaMA and ViT; a zero gate changes the output. Numerics against transformers
// are in tests/hf/test_models.py.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <ATen/CPUGeneratorImpl.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/format/plan.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "tests/unit/test_util.h"

namespace hawada {
namespace {

const std::string kData = HAWADA_TEST_DATA_DIR;

struct Loaded {
  HfCheckpoint ckpt;
  std::unique_ptr<Model> model;
};

Loaded load(const std::string& dir, at::ScalarType dtype) {
  auto ckpt = HfCheckpoint::open(kData + "/" + dir);
  auto model = adapter_for(ckpt.config(), ckpt.dir() / "config.json").load(ckpt, {.dtype = dtype});
  return {std::move(ckpt), std::move(model)};
}

GateValues ones(const GateShape& s) {
  return {at::ones({s.layers, s.heads}), at::ones({s.layers, s.ffn}), at::ones({s.hidden}), at::ones({s.layers})};
}

Batch llama_batch() {
  at::manual_seed(0);
  Batch b{at::randint(0, 64, {2, 9}, at::kLong), at::ones({2, 9}, at::kLong), {}};
  b.attention_mask[1].slice(0, 6).zero_();
  return b;
}

Batch vit_batch() {
  at::manual_seed(0);
  return {{}, {}, at::randn({2, 3, 32, 32})};
}

class GatesAtOne : public ::testing::TestWithParam<std::tuple<std::string, at::ScalarType>> {};

TEST_P(GatesAtOne, AreBitIdenticalToNoGates) {
  const auto& [dir, dtype] = GetParam();
  auto m = load(dir, dtype);
  const Batch batch = dir == "tiny-llama" ? llama_batch() : vit_batch();
  at::NoGradGuard no_grad;
  const at::Tensor teacher = m.model->logits(batch);
  const GateValues g = ones(m.model->gate_shape());
  const at::Tensor student = m.model->logits(batch, &g);
  EXPECT_EQ(teacher.scalar_type(), dtype);
  EXPECT_TRUE(at::equal(teacher, student)) << "max diff " << (teacher - student).abs().max().item<float>();

  GateValues one_head_off = ones(m.model->gate_shape());
  one_head_off.heads[0][1] = 0;
  EXPECT_FALSE(at::equal(teacher, m.model->logits(batch, &one_head_off)));
  GateValues one_channel_off = ones(m.model->gate_shape());
  one_channel_off.hidden[3] = 0;
  EXPECT_FALSE(at::equal(teacher, m.model->logits(batch, &one_channel_off)));
  GateValues one_block_off = ones(m.model->gate_shape());
  one_block_off.layers[0] = 0;
  EXPECT_FALSE(at::equal(teacher, m.model->logits(batch, &one_block_off)));
}

// A KV-cache decode (a prefill, then one token at a time, then two at once) computes what one forward over
// the whole sequence computes; models that do not decode say so.
TEST(Models, DecodeWithTheCacheEqualsTheFullForward) {
  auto m = load("tiny-llama", at::kFloat);
  at::manual_seed(1);
  const at::Tensor ids = at::randint(0, 64, {2, 12}, at::kLong);
  at::NoGradGuard no_grad;
  const at::Tensor full = m.model->features(Batch{ids, {}, {}});
  KvCache cache;
  std::vector<at::Tensor> parts{m.model->decode(ids.slice(1, 0, 7), cache)};
  for (int64_t t = 7; t < 10; ++t) parts.push_back(m.model->decode(ids.slice(1, t, t + 1), cache));
  parts.push_back(m.model->decode(ids.slice(1, 10, 12), cache));
  EXPECT_EQ(cache.length, 12);
  const at::Tensor stepwise = at::cat(parts, 1);
  const double diff = (stepwise - full).abs().max().item<double>();
  EXPECT_LE(diff, 1e-5 * full.abs().max().item<double>()) << "max diff " << diff;
  auto v = load("tiny-vit", at::kFloat);
  KvCache none;
  EXPECT_THROW(v.model->decode(ids, none), UsageError);
}

// Gemma 3 (gemma3_text) with random weights from its role table: its windowed layers see only the last
// sliding_window keys, in a decode with the KV cache as in the full forward (12 tokens, window 4), and the
// window changes the result (a full-attention model of the same weights differs).
TEST(Models, Gemma3DecodeBeyondTheWindowEqualsTheFullForward) {
  testing::TempDir dir;
  nlohmann::json config = {{"architectures", {"Gemma3ForCausalLM"}},
                           {"model_type", "gemma3_text"},
                           {"vocab_size", 64},
                           {"hidden_size", 32},
                           {"intermediate_size", 48},
                           {"num_hidden_layers", 3},
                           {"num_attention_heads", 4},
                           {"num_key_value_heads", 2},
                           {"head_dim", 8},
                           {"sliding_window", 4},
                           {"layer_types", {"sliding_attention", "full_attention", "sliding_attention"}}};
  // One RoPE base for both kinds (Gemma's differ), so that the window is the only difference below.
  const nlohmann::json rope = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  config["rope_parameters"] = {{"full_attention", rope}, {"sliding_attention", rope}};
  const auto write = [&](const nlohmann::json& c, const std::filesystem::path& d) {
    std::filesystem::create_directories(d);
    std::ofstream(d / "config.json") << c.dump();
    const ModelAdapter& adapter = adapter_for(c, d / "config.json");
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    safetensors::write_model_weights(
        d, adapter.roles().random_weights(adapter.summarize(c, d / "config.json"), 0.3, at::kFloat, gen), 1ull << 30);
  };
  write(config, dir.path() / "windowed");
  config["layer_types"] = {"full_attention", "full_attention", "full_attention"};
  write(config, dir.path() / "full");
  const auto open = [&](const char* name) {
    auto ckpt = HfCheckpoint::open(dir.path() / name);
    auto model = adapter_for(ckpt.config(), ckpt.dir() / "config.json").load(ckpt, {.dtype = at::kFloat});
    return Loaded{std::move(ckpt), std::move(model)};
  };
  auto m = open("windowed");
  at::manual_seed(2);
  const at::Tensor ids = at::randint(0, 64, {2, 12}, at::kLong);
  at::NoGradGuard no_grad;
  const at::Tensor full = m.model->features(Batch{ids, {}, {}});
  KvCache cache;
  std::vector<at::Tensor> parts{m.model->decode(ids.slice(1, 0, 3), cache)};
  for (int64_t t = 3; t < 10; ++t) parts.push_back(m.model->decode(ids.slice(1, t, t + 1), cache));
  parts.push_back(m.model->decode(ids.slice(1, 10, 12), cache));
  const at::Tensor stepwise = at::cat(parts, 1);
  EXPECT_LE((stepwise - full).abs().max().item<double>(), 1e-5 * full.abs().max().item<double>());
  const at::Tensor unwindowed = open("full").model->features(Batch{ids, {}, {}});
  EXPECT_TRUE(at::allclose(unwindowed.slice(1, 0, 4), full.slice(1, 0, 4), 1e-5, 1e-5));  // within the window
  EXPECT_GT((unwindowed.slice(1, 4) - full.slice(1, 4)).abs().max().item<double>(), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Models, GatesAtOne,
                         ::testing::Combine(::testing::Values("tiny-llama", "tiny-vit"),
                                            ::testing::Values(at::kFloat, at::kBFloat16)),
                         [](const auto& info) {
                           std::string name =
                               std::get<0>(info.param) + "_" + std::string(c10::toString(std::get<1>(info.param)));
                           for (auto& c : name) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

TEST(Models, GradientsReachOnlyGates) {
  auto m = load("tiny-llama", at::kFloat);
  GateValues g = ones(m.model->gate_shape());
  g.heads.requires_grad_(true);
  g.ffn.requires_grad_(true);
  g.hidden.requires_grad_(true);
  m.model->logits(llama_batch(), &g).pow(2).mean().backward();
  for (const at::Tensor* t : {&g.heads, &g.ffn, &g.hidden}) {
    ASSERT_TRUE(t->grad().defined());
    EXPECT_GT(t->grad().abs().sum().item<float>(), 0.f);
  }
  EXPECT_FALSE(m.ckpt.tensor("model.embed_tokens.weight").requires_grad());
}

TEST(Models, WrongInputsAreDataErrors) {
  auto m = load("tiny-llama", at::kFloat);
  Batch bad{at::full({1, 3}, 64, at::kLong), {}, {}};
  EXPECT_THROW(m.model->logits(bad), DataError);
  auto v = load("tiny-vit", at::kFloat);
  Batch px{{}, {}, at::zeros({1, 3, 16, 16})};
  EXPECT_THROW(v.model->logits(px), DataError);
}

// A fused axis keeps each part's kept rows where its layout puts them: whole blocks one after another
// ([q | k | v]: Phi-3) or head by head (q, k, v of head h, then of h + 1: GPT-NeoX's query_key_value).
TEST(Models, FusedAxesKeepEachPartsRowsWhereTheLayoutPutsThem) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir.path() / "m");
  std::ofstream(dir.path() / "m" / "config.json") << "{}";
  const int64_t heads = 3, hd = 2, hidden = 4;
  const at::Tensor rows = at::arange(3 * heads * hd, at::kFloat).unsqueeze(1).repeat({1, hidden});
  safetensors::write_model_weights(dir.path() / "m", {{"l.0.blocks", rows}, {"l.0.heads", rows}}, 1ull << 30);
  const RoleTable table({
      {"l.%d.blocks",
       "attention",
       {Axis::fused, Axis::hidden},
       Presence::always,
       Fold::none,
       Use::matrix,
       Init::normal,
       true,
       {Axis::q, Axis::kv, Axis::kv},
       Fuse::blocks},
      {"l.%d.heads",
       "attention",
       {Axis::fused, Axis::hidden},
       Presence::always,
       Fold::none,
       Use::matrix,
       Init::normal,
       true,
       {Axis::q, Axis::kv, Axis::kv},
       Fuse::per_head},
  });
  Plan plan;
  plan.dense.shape = ModelShape{1, hidden, heads, heads, hd, 8, {}};
  plan.heads = {{0, 2}};
  plan.kv_heads = {{0, 2}};
  plan.ffn = {{0}};
  plan.hidden = {1, 3};
  plan.layers = {0};
  const auto ckpt = HfCheckpoint::open(dir.path() / "m");
  ArchSummary arch;
  arch.heads = arch.kv_heads = heads, arch.head_dim = hd, arch.hidden = hidden;
  EXPECT_EQ(table.shape(0, arch), (std::vector<int64_t>{3 * heads * hd, hidden}));
  std::map<std::string, at::Tensor> out;
  for (auto& [name, t] : table.prune(ckpt, plan, GateValues{}, std::nullopt)) out[name] = t;
  const auto kept = [&](const char* name) {
    EXPECT_EQ(out.at(name).size(1), 2);
    const at::Tensor first = out.at(name).select(1, 0).contiguous();
    return std::vector<float>(first.data_ptr<float>(), first.data_ptr<float>() + first.numel());
  };
  // Heads 0 and 2 of q (rows 0-5), k (6-11), v (12-17).
  EXPECT_EQ(kept("l.0.blocks"), (std::vector<float>{0, 1, 4, 5, 6, 7, 10, 11, 12, 13, 16, 17}));
  // Head h's q, k, v at rows 6h .. 6h + 5.
  EXPECT_EQ(kept("l.0.heads"), (std::vector<float>{0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17}));
  // Per head, every part must keep the same heads.
  plan.kv_heads = {{0, 1}};
  EXPECT_THROW(table.prune(ckpt, plan, GateValues{}, std::nullopt), CheckpointError);
}

}  // namespace
}  // namespace hawada
