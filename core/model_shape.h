// A uniform transformer shape (every layer alike, as transformers builds them from config.json): what
// the cost model prices, the search chooses among and a plan records. No LibTorch here.
#pragma once

#include <cstdint>

namespace hawada {

/// A uniform transformer shape, as config.json describes it.
struct ModelShape {
  enum class Family { llama, vit };
  Family family = Family::llama;
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0;
  // llama
  int64_t vocab = 0;
  bool tied = false, attention_bias = false, mlp_bias = false;
  // vit
  int64_t num_labels = 0, image_size = 0, patch_size = 0, channels = 3;
  bool qkv_bias = true, classifier = true, pooler = false;
};

}  // namespace hawada
