// `hawada-pipeline profile MODEL_DIR --out table.json`: measured latencies for the rounding search.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace hawada {

struct ProfileOptions {
  int64_t batch = 1;
  int64_t tokens = 0;  ///< 0: 512 for a language model, patches + 1 for a ViT
  int64_t ffn_multiple = 256, hidden_multiple = 128;
  bool prune_kv_groups = false, hidden = false;  ///< as [search] prune_kv_groups and [gates] hidden
  std::string dtype = "";                        ///< "bf16" or "fp32"; "" = bf16 on a GPU, fp32 on a CPU
  int repeats = 3;
  int64_t decode_context = 0;  ///< > 0: a decode step (1 new token per sequence) against a KV cache of this many tokens
};

/// Times the model's attention block, MLP block and remaining work (LM head / patch embedding) with
/// random weights at every width the search can pick under these settings, on the GPU when one is
/// present, else the CPU (median of `repeats` after a warm-up), and writes the table atomically.
void profile_command(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                     const ProfileOptions& options);

}  // namespace hawada
