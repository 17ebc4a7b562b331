// The cost model: FLOPs of the matrix products against a count by hand, and the roofline latency.
// Parameter counts are checked against transformers in tests/hf/test_inspect.py.
#include <gtest/gtest.h>

#include "core/cost_model.h"

namespace hawada {
namespace {

ModelShape llama_1b() {
  ModelShape s;
  s.layers = 16, s.hidden = 2048, s.heads = 32, s.kv_heads = 8, s.head_dim = 64, s.ffn = 8192, s.vocab = 128256;
  s.tied = true;
  return s;
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

}  // namespace
}  // namespace hawada
