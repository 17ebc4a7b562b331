// The cost model: FLOPs of the matrix products against a count by hand, and the roofline latency.
// Parameter counts are checked against transformers in tests/hf/test_inspect.py.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include "adapters/adapter.h"
#include "core/prune/cost_model.h"

namespace hawada {
namespace {

// Shapes as the adapters describe them from a config.json (their traits included).
ModelShape shape_of(const nlohmann::json& config) {
  return model_shape(adapter_for(config, "config.json").summarize(config, "config.json"));
}

ModelShape llama_1b() {
  return shape_of({{"model_type", "llama"},
                   {"num_hidden_layers", 16},
                   {"hidden_size", 2048},
                   {"num_attention_heads", 32},
                   {"num_key_value_heads", 8},
                   {"head_dim", 64},
                   {"intermediate_size", 8192},
                   {"vocab_size", 128256},
                   {"tie_word_embeddings", true}});
}

TEST(CostModel, Llama1BParametersAndFlops) {
  const ModelShape s = llama_1b();
  EXPECT_EQ(parameter_count(s), 1235814400);  // LLaMA-3.2-1B's published count
  // Matrix products: 2 FLOPs per weight per token for every projection and the lm_head, plus attention.
  const int64_t T = 128;
  const double proj = 2.0 * T * (16.0 * (2048.0 * 2048 * 2 + 2048.0 * 512 * 2 + 3.0 * 2048 * 8192) + 2048.0 * 128256);
  const double attention = 16.0 * 2 * (2.0 * 32 * T * 64 * T);
  EXPECT_DOUBLE_EQ(forward_cost(s, 1, T).flops, proj + attention);
}

// Non-embedding parameters leave out the embedding tables only: LLaMA-3.2-1B's tied 128256 x 2048 table,
// an untied model's input table but not its head, BERT's word, position and token-type tables.
TEST(CostModel, NonEmbeddingParametersLeaveOutTheEmbeddingTables) {
  const ModelShape s = llama_1b();
  EXPECT_EQ(parameter_count(s, ParameterScope::non_embedding), 1235814400 - 128256ll * 2048);
  ModelShape untied = shape_of({{"model_type", "llama"},
                                {"num_hidden_layers", 2},
                                {"hidden_size", 64},
                                {"num_attention_heads", 4},
                                {"num_key_value_heads", 2},
                                {"intermediate_size", 128},
                                {"vocab_size", 1000},
                                {"tie_word_embeddings", false}});
  EXPECT_EQ(parameter_count(untied) - parameter_count(untied, ParameterScope::non_embedding), 1000 * 64);
  const ModelShape bert = shape_of({{"model_type", "bert"},
                                    {"num_hidden_layers", 2},
                                    {"hidden_size", 64},
                                    {"num_attention_heads", 4},
                                    {"intermediate_size", 128},
                                    {"vocab_size", 1000},
                                    {"max_position_embeddings", 512},
                                    {"type_vocab_size", 2}});
  EXPECT_EQ(parameter_count(bert) - parameter_count(bert, ParameterScope::non_embedding), (1000 + 512 + 2) * 64);
  // The expected count with gates follows the kept hidden width: at integer counts it is the shape's.
  ModelShape slim = s;
  slim.hidden = 1536;
  GateCounts c;
  c.hidden = at::scalar_tensor(1536.0, at::kDouble);
  EXPECT_EQ(expected_parameters(s, c, ParameterScope::non_embedding).item<double>(),
            static_cast<double>(parameter_count(slim, ParameterScope::non_embedding)));
}

TEST(CostModel, RooflineLatency) {
  const ModelShape s = llama_1b();
  // Batch 1 decode-like shapes are bandwidth bound: about the weight bytes over the bandwidth.
  const double one = latency_seconds(s, 1, 1);
  EXPECT_NEAR(one, 2.0 * parameter_count(s) / 3.35e12, 0.05 * one);
  // Large batches are compute bound: 8x the batch costs about 8x the time.
  EXPECT_NEAR(latency_seconds(s, 64, 512) / latency_seconds(s, 8, 512), 8.0, 0.2);
  ModelShape slim = s;
  slim.ffn = 4096;
  EXPECT_LT(latency_seconds(slim, 8, 512), latency_seconds(s, 8, 512));
}

ModelShape vit_base() {
  nlohmann::json labels;
  for (int i = 0; i < 1000; ++i) labels[std::to_string(i)] = "c" + std::to_string(i);
  return shape_of({{"model_type", "vit"},
                   {"architectures", {"ViTForImageClassification"}},
                   {"num_hidden_layers", 12},
                   {"hidden_size", 768},
                   {"num_attention_heads", 12},
                   {"intermediate_size", 3072},
                   {"id2label", labels},
                   {"image_size", 224},
                   {"patch_size", 16}});
}

// Training's differentiable cost and the search's concrete cost are one set of formulas: at
// integer, uniform counts they agree exactly, for parameters and latency, on both families.
TEST(CostModel, ExpectedCostAtIntegerCountsEqualsTheShapesCost) {
  for (ModelShape s : {llama_1b(), vit_base()}) {
    const bool vit = s.traits.hidden_is_heads;
    ModelShape slim = s;
    slim.heads = vit ? 8 : 16, slim.ffn = 1536, slim.hidden = vit ? 512 : 1536;
    if (vit) slim.kv_heads = slim.heads;
    GateCounts c;
    c.heads = at::full({s.layers}, static_cast<double>(slim.heads), at::kDouble);
    c.ffn = at::full({s.layers}, static_cast<double>(slim.ffn), at::kDouble);
    c.hidden = at::scalar_tensor(static_cast<double>(slim.hidden), at::kDouble);
    EXPECT_EQ(expected_parameters(slim, {}).item<double>(), static_cast<double>(parameter_count(slim)));
    if (!vit) {
      EXPECT_EQ(expected_parameters(s, c).item<double>(), static_cast<double>(parameter_count(slim)));
    }
    const int64_t tokens = vit ? 197 : 512;
    if (!vit) {
      EXPECT_DOUBLE_EQ(expected_latency(s, c, 4, tokens).item<double>(), latency_seconds(slim, 4, tokens));
    }
    EXPECT_DOUBLE_EQ(expected_latency(s, {}, 4, tokens).item<double>(), latency_seconds(s, 4, tokens));
  }
}

TEST(CostModel, ExpectedCostIsDifferentiableInTheCounts) {
  const ModelShape s = llama_1b();
  GateCounts c;
  c.heads = at::full({s.layers}, 20.0, at::kDouble).requires_grad_();
  c.ffn = at::full({s.layers}, 5000.0, at::kDouble).requires_grad_();
  c.hidden = at::scalar_tensor(1800.0, at::kDouble).requires_grad_();
  expected_parameters(s, c).backward();
  // d params / d ffn channel of one layer = 3 * hidden; / d head = 2 * hidden * head_dim.
  EXPECT_DOUBLE_EQ(c.ffn.grad()[3].item<double>(), 3 * 1800.0);
  EXPECT_DOUBLE_EQ(c.heads.grad()[0].item<double>(), 2 * 1800.0 * 64);
  EXPECT_GT(c.hidden.grad().item<double>(), 0);
}

// A layer gate weights its whole block: keeping k of L blocks (0/1 keeps) costs what a k-layer shape
// costs, in parameters and in latency (prefill and decode, with the per-layer overhead); the gradient of
// a block's keep is that block's cost.
TEST(CostModel, LayerKeepsCostWhatAShallowerShapeCosts) {
  const ModelShape s = llama_1b();
  ModelShape shallow = s;
  shallow.layers = 11;
  GateCounts c;
  c.layers = at::ones({s.layers}, at::kDouble);
  for (int64_t l : {0, 3, 7, 8, 15}) c.layers[l] = 0.0;
  EXPECT_EQ(expected_parameters(s, c).item<double>(), static_cast<double>(parameter_count(shallow)));
  DeviceRates rates;
  rates.layer_overhead_s = 30e-6;
  EXPECT_DOUBLE_EQ(expected_latency(s, c, 1, 256, rates).item<double>(), latency_seconds(shallow, 1, 256, rates));
  EXPECT_DOUBLE_EQ(expected_latency(s, c, 1, 1, rates, 2, 256).item<double>(),
                   latency_seconds(shallow, 1, 1, rates, 2, 256));
  // The overhead is a fixed cost per block.
  DeviceRates none = rates;
  none.layer_overhead_s = 0;
  EXPECT_NEAR(latency_seconds(s, 1, 1, rates, 2, 256) - latency_seconds(s, 1, 1, none, 2, 256), 16 * 30e-6, 1e-15);
  // d params / d keep of one block = that block's parameters.
  GateCounts g;
  g.layers = at::full({s.layers}, 0.5, at::kDouble).requires_grad_();
  expected_parameters(s, g).backward();
  ModelShape one = s;
  one.layers = 1;
  ModelShape two = s;
  two.layers = 2;
  EXPECT_DOUBLE_EQ(g.layers.grad()[5].item<double>(), static_cast<double>(parameter_count(two) - parameter_count(one)));
}

// A decode step (one token per sequence against a KV cache) is bandwidth bound at batch 1: about the
// weight bytes plus the cache's; a longer cache costs more; dropping blocks saves more than narrowing them.
TEST(CostModel, DecodeStepReadsTheWeightsAndTheCache) {
  const ModelShape s = llama_1b();
  const double short_ctx = latency_seconds(s, 1, 1, {}, 2, 256), long_ctx = latency_seconds(s, 1, 1, {}, 2, 8192);
  EXPECT_NEAR(short_ctx, 2.0 * parameter_count(s) / 3.35e12, 0.05 * short_ctx);
  EXPECT_GT(long_ctx, short_ctx);
  // Per layer, each of the 8 kv heads' keys and values [C, 64] read once, and 32 query heads' scores
  // written and read: (2 x 8 x 64 + 2 x 32) x C elements of 2 bytes.
  const double cache_bytes = 16.0 * (2 * 8 * 64 + 2 * 32) * (8192 - 256) * 2;
  EXPECT_NEAR(long_ctx - short_ctx, cache_bytes / 3.35e12, 0.05 * (long_ctx - short_ctx));
}

// The two parameter counts agree: the role tables' (every weight the architecture has, by its axes)
// and the cost model's (formulas over the traits, which the search evaluates at any shape), for every
// architecture and its options (biases, per-head norms, untied heads, poolers, classifiers).
TEST(CostModel, RoleTablesCountWhatTheCostModelCounts) {
  using nlohmann::json;
  const json llama{{"model_type", "llama"},    {"num_hidden_layers", 3},   {"hidden_size", 96},
                   {"num_attention_heads", 6}, {"num_key_value_heads", 2}, {"head_dim", 16},
                   {"intermediate_size", 200}, {"vocab_size", 300}};
  std::vector<std::pair<json, bool>> configs;  // config, pooler
  for (bool tied : {true, false}) {
    json c = llama;
    c["tie_word_embeddings"] = tied;
    configs.push_back({c, false});
  }
  for (const char* type : {"mistral", "qwen2", "qwen3"}) {
    json c = llama;
    c["model_type"] = type;
    configs.push_back({c, false});
  }
  json phi3 = llama;  // fused qkv_proj and gate_up_proj
  phi3["model_type"] = "phi3";
  configs.push_back({phi3, false});
  phi3["rope_scaling"] = {{"type", "longrope"}, {"short_factor", std::vector<double>(8, 1.0)}};
  configs.push_back({phi3, false});
  json neox = llama;  // per-head query_key_value, LayerNorms with biases, two MLP matrices
  neox["model_type"] = "gpt_neox";
  neox["num_key_value_heads"] = 6;
  neox["head_dim"] = 16;
  configs.push_back({neox, false});
  neox["attention_bias"] = false;
  neox["tie_word_embeddings"] = true;
  configs.push_back({neox, false});
  json biased = llama;
  biased["attention_bias"] = true;
  biased["mlp_bias"] = true;
  configs.push_back({biased, false});
  const json vit{{"model_type", "vit"},
                 {"architectures", {"ViTForImageClassification"}},
                 {"num_hidden_layers", 2},
                 {"hidden_size", 64},
                 {"num_attention_heads", 4},
                 {"intermediate_size", 128},
                 {"image_size", 32},
                 {"patch_size", 8},
                 {"id2label", {{"0", "a"}, {"1", "b"}, {"2", "c"}}}};
  configs.push_back({vit, false});
  json bare_vit = vit;
  bare_vit["architectures"] = {"ViTModel"};
  configs.push_back({bare_vit, true});
  configs.push_back({bare_vit, false});
  const json bert{{"model_type", "bert"},         {"num_hidden_layers", 2},   {"hidden_size", 64},
                  {"num_attention_heads", 4},     {"intermediate_size", 128}, {"vocab_size", 300},
                  {"max_position_embeddings", 40}};
  configs.push_back({bert, true});
  configs.push_back({bert, false});
  for (const auto& [config, pooler] : configs) {
    const ModelAdapter& adapter = adapter_for(config, "config.json");
    ArchSummary arch = adapter.summarize(config, "config.json");
    arch.pooler = pooler;
    EXPECT_EQ(adapter.roles().parameters(arch), parameter_count(model_shape(arch))) << config.dump();
  }
}

}  // namespace
}  // namespace hawada
