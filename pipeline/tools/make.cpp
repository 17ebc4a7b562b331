#include "pipeline/tools/make.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <nlohmann/json.hpp>

#include "adapters/adapter.h"
#include "core/io/checkpoint.h"
#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/data/h5.h"
#include "core/base/log.h"
#include "core/io/safetensors.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Generator {
  explicit Generator(int64_t seed) : gen(at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed))) {}
  at::Tensor normal(std::vector<int64_t> shape, double std, at::ScalarType dtype) {
    return at::empty(shape, at::kFloat).normal_(0.0, std, gen).to(dtype);
  }
  at::Generator gen;
};

json llama_config(const std::string& preset) {
  if (preset == "tiny")
    return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", 512},
            {"hidden_size", 64}, {"intermediate_size", 256}, {"num_hidden_layers", 4}, {"num_attention_heads", 8},
            {"num_key_value_heads", 2}, {"head_dim", 8}, {"hidden_act", "silu"}, {"max_position_embeddings", 256},
            {"rms_norm_eps", 1e-6}, {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 10000.0}}},
            {"tie_word_embeddings", true}, {"attention_bias", false}, {"mlp_bias", false},
            {"initializer_range", 0.1}, {"bos_token_id", 1}, {"eos_token_id", 2}, {"dtype", "float32"},
            {"torch_dtype", "float32"}};
  if (preset == "llama-3.2-1b")
    return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", 128256},
            {"hidden_size", 2048}, {"intermediate_size", 8192}, {"num_hidden_layers", 16},
            {"num_attention_heads", 32}, {"num_key_value_heads", 8}, {"head_dim", 64}, {"hidden_act", "silu"},
            {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-5},
            {"rope_parameters",
             {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 32.0}, {"low_freq_factor", 1.0},
              {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}},
            {"tie_word_embeddings", true}, {"attention_bias", false}, {"mlp_bias", false},
            {"initializer_range", 0.02}, {"bos_token_id", 128000}, {"eos_token_id", 128001},
            {"dtype", "bfloat16"}, {"torch_dtype", "bfloat16"}};
  throw UsageError("--preset '" + preset + "' is not a llama preset (tiny, llama-3.2-1b)");
}

json vit_config(const std::string& preset) {
  json c;
  if (preset == "tiny")
    c = {{"hidden_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"intermediate_size", 256},
         {"image_size", 32}, {"patch_size", 8}, {"initializer_range", 0.1}, {"dtype", "float32"},
         {"torch_dtype", "float32"}};
  else if (preset == "vit-base-patch16-224")
    c = {{"hidden_size", 768}, {"num_hidden_layers", 12}, {"num_attention_heads", 12}, {"intermediate_size", 3072},
         {"image_size", 224}, {"patch_size", 16}, {"initializer_range", 0.02}, {"dtype", "float32"},
         {"torch_dtype", "float32"}};
  else
    throw UsageError("--preset '" + preset + "' is not a vit preset (tiny, vit-base-patch16-224)");
  const int labels = preset == "tiny" ? 10 : 1000;
  json id2label = json::object(), label2id = json::object();
  for (int i = 0; i < labels; ++i) {
    id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
    label2id["LABEL_" + std::to_string(i)] = i;
  }
  c.update({{"architectures", {"ViTForImageClassification"}}, {"model_type", "vit"}, {"hidden_act", "gelu"},
            {"layer_norm_eps", 1e-12}, {"num_channels", 3}, {"qkv_bias", true}, {"encoder_stride", 16},
            {"hidden_dropout_prob", 0.0}, {"attention_probs_dropout_prob", 0.0}, {"id2label", id2label},
            {"label2id", label2id}});
  return c;
}

std::vector<safetensors::NamedTensor> llama_weights(const json& c, Generator& g) {
  const at::ScalarType dt = c["dtype"] == "bfloat16" ? at::kBFloat16 : at::kFloat;
  const double std = c["initializer_range"].get<double>();
  const int64_t h = c["hidden_size"], f = c["intermediate_size"], v = c["vocab_size"], hd = c["head_dim"];
  const int64_t q = c["num_attention_heads"].get<int64_t>() * hd, kv = c["num_key_value_heads"].get<int64_t>() * hd;
  std::vector<safetensors::NamedTensor> w;
  w.push_back({"model.embed_tokens.weight", g.normal({v, h}, std, dt)});
  for (int64_t l = 0; l < c["num_hidden_layers"].get<int64_t>(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w.push_back({p + "self_attn.q_proj.weight", g.normal({q, h}, std, dt)});
    w.push_back({p + "self_attn.k_proj.weight", g.normal({kv, h}, std, dt)});
    w.push_back({p + "self_attn.v_proj.weight", g.normal({kv, h}, std, dt)});
    w.push_back({p + "self_attn.o_proj.weight", g.normal({h, q}, std, dt)});
    w.push_back({p + "mlp.gate_proj.weight", g.normal({f, h}, std, dt)});
    w.push_back({p + "mlp.up_proj.weight", g.normal({f, h}, std, dt)});
    w.push_back({p + "mlp.down_proj.weight", g.normal({h, f}, std, dt)});
    w.push_back({p + "input_layernorm.weight", at::ones({h}, dt)});
    w.push_back({p + "post_attention_layernorm.weight", at::ones({h}, dt)});
  }
  w.push_back({"model.norm.weight", at::ones({h}, dt)});
  if (!c["tie_word_embeddings"].get<bool>()) w.push_back({"lm_head.weight", g.normal({v, h}, std, dt)});
  return w;
}

std::vector<safetensors::NamedTensor> vit_weights(const json& c, Generator& g) {
  const at::ScalarType dt = at::kFloat;
  const double std = c["initializer_range"].get<double>();
  const int64_t h = c["hidden_size"], f = c["intermediate_size"], p = c["patch_size"], img = c["image_size"];
  const int64_t labels = static_cast<int64_t>(c["id2label"].size()), grid = img / p;
  std::vector<safetensors::NamedTensor> w;
  auto affine = [&](const std::string& base, int64_t out, int64_t in) {
    w.push_back({base + ".weight", g.normal({out, in}, std, dt)});
    w.push_back({base + ".bias", at::zeros({out}, dt)});
  };
  auto norm = [&](const std::string& base) {
    w.push_back({base + ".weight", at::ones({h}, dt)});
    w.push_back({base + ".bias", at::zeros({h}, dt)});
  };
  w.push_back({"vit.embeddings.cls_token", g.normal({1, 1, h}, std, dt)});
  w.push_back({"vit.embeddings.position_embeddings", g.normal({1, grid * grid + 1, h}, std, dt)});
  w.push_back({"vit.embeddings.patch_embeddings.projection.weight", g.normal({h, 3, p, p}, std, dt)});
  w.push_back({"vit.embeddings.patch_embeddings.projection.bias", at::zeros({h}, dt)});
  for (int64_t l = 0; l < c["num_hidden_layers"].get<int64_t>(); ++l) {
    const std::string b = "vit.encoder.layer." + std::to_string(l) + ".";
    affine(b + "attention.attention.query", h, h);
    affine(b + "attention.attention.key", h, h);
    affine(b + "attention.attention.value", h, h);
    affine(b + "attention.output.dense", h, h);
    affine(b + "intermediate.dense", f, h);
    affine(b + "output.dense", h, f);
    norm(b + "layernorm_before");
    norm(b + "layernorm_after");
  }
  norm("vit.layernorm");
  affine("classifier", labels, h);
  return w;
}

}  // namespace

void make_model(const std::string& arch, const std::string& preset, int64_t seed, const fs::path& out_dir) {
  if (arch != "llama" && arch != "vit") throw UsageError("--arch must be llama or vit, got '" + arch + "'");
  const json config = arch == "llama" ? llama_config(preset) : vit_config(preset);
  Generator g(seed);
  const auto weights = arch == "llama" ? llama_weights(config, g) : vit_weights(config, g);
  publish_directory(out_dir, [&](const fs::path& tmp) {
    atomic_write_text(tmp / "config.json", config.dump(2) + "\n");
    if (arch == "llama") {
      atomic_write_text(tmp / "generation_config.json",
                        json{{"bos_token_id", config["bos_token_id"]}, {"eos_token_id", config["eos_token_id"]}}.dump(2) + "\n");
    } else {
      const json pre{{"do_normalize", true}, {"do_rescale", true}, {"do_resize", true},
                     {"image_mean", {0.5, 0.5, 0.5}}, {"image_std", {0.5, 0.5, 0.5}},
                     {"image_processor_type", "ViTImageProcessor"}, {"resample", 2}, {"rescale_factor", 1.0 / 255},
                     {"size", {{"height", config["image_size"]}, {"width", config["image_size"]}}}};
      atomic_write_text(tmp / "preprocessor_config.json", pre.dump(2) + "\n");
    }
    safetensors::write_model_weights(tmp, weights, 5'000'000'000ULL);
  });
  uint64_t params = 0;
  for (const auto& w : weights) params += static_cast<uint64_t>(w.tensor.numel());
  log::info("make-model: " + out_dir.string() + ": " + arch + " " + preset + ", " + std::to_string(params) +
            " parameters, seed " + std::to_string(seed));
}

void make_data(const fs::path& model_dir, int64_t samples, int64_t seq_len, int64_t seed, const fs::path& out_file) {
  if (samples < 1) throw UsageError("--samples must be at least 1");
  if (fs::exists(out_file)) throw IoError("'" + out_file.string() + "' exists; make-data never overwrites");
  const HfCheckpoint ckpt = HfCheckpoint::open(model_dir);
  const auto config_file = model_dir / "config.json";
  const ArchSummary arch = adapter_for(ckpt.config(), config_file).summarize(ckpt.config(), config_file);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  if (!out_file.parent_path().empty()) fs::create_directories(out_file.parent_path());
  const fs::path tmp = temp_sibling(out_file);
  try {
    h5::File f = h5::File::create(tmp);
    if (arch.vocab_size > 0) {
      if (seq_len < 1) throw UsageError("--seq-len must be at least 1 for a language model");
      const at::Tensor ids = at::randint(arch.vocab_size, {samples, seq_len}, gen, at::kInt);
      f.write("input_ids", h5::Type::i32, {samples, seq_len}, ids.data_ptr());
    } else {
      // Smooth patterns (low-resolution noise, upsampled) so images have structure, as uint8.
      const int64_t s = arch.image_size;
      at::Tensor low = at::rand({samples, 3, 4, 4}, gen);
      at::Tensor img = at::upsample_bilinear2d(low, {s, s}, false);
      img = (img * 255).round().clamp(0, 255).to(at::kByte).contiguous();
      f.write("pixel_values", h5::Type::u8, {samples, 3, s, s}, img.data_ptr());
    }
    f.close();
    sync_file(tmp);
    rename_into(tmp, out_file);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  log::info("make-data: " + out_file.string() + ": " + std::to_string(samples) +
            (arch.vocab_size > 0 ? " sequences of " + std::to_string(seq_len) + " tokens" : " images"));
}

}  // namespace hawada
