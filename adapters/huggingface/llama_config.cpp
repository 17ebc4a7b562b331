// LlamaForCausalLM's config.json, read without LibTorch (the fuzz target of the reader builds it alone).
#include <nlohmann/json.hpp>

#include "adapters/arch.h"
#include "core/errors.h"

namespace hawada {
namespace {

namespace cf = config_field;

// Generous bounds (LLaMA-3.1-405B: 126 layers, hidden 16384, 128 heads, head_dim 128): a config.json
// beyond them is refused before anything is sized by it.
constexpr int64_t kMaxLayers = 1024, kMaxHidden = int64_t{1} << 17, kMaxHeads = 4096, kMaxHeadDim = 4096;

}  // namespace

ArchSummary summarize_llama_config(const nlohmann::json& config, const std::filesystem::path& file) {
  ArchSummary s;
  s.model_type = "llama";
  s.architecture = cf::architecture(config, "LlamaForCausalLM");
  s.layers = cf::integer(config, "num_hidden_layers", file, nullptr, false, kMaxLayers);
  s.hidden = cf::integer(config, "hidden_size", file, nullptr, false, kMaxHidden);
  s.heads = cf::integer(config, "num_attention_heads", file, nullptr, false, kMaxHeads);
  s.kv_heads = cf::integer(config, "num_key_value_heads", file, &s.heads, false, s.heads);
  s.ffn = cf::integer(config, "intermediate_size", file);
  s.vocab_size = cf::integer(config, "vocab_size", file);
  const int64_t default_head_dim = s.hidden / s.heads;
  s.head_dim = cf::integer(config, "head_dim", file, &default_head_dim, false, kMaxHeadDim);
  // LlamaConfig's default is untied.
  s.tied_embeddings = cf::boolean(config, "tie_word_embeddings", file, false);
  s.attention_bias = cf::boolean(config, "attention_bias", file, false);
  s.mlp_bias = cf::boolean(config, "mlp_bias", file, false);
  if (s.heads % s.kv_heads != 0)
    throw CheckpointError("'" + file.string() + "': num_attention_heads " + std::to_string(s.heads) +
                          " is not a multiple of num_key_value_heads " + std::to_string(s.kv_heads));
  if (s.head_dim % 2 != 0)
    throw CheckpointError("'" + file.string() + "': head_dim " + std::to_string(s.head_dim) + " must be even (RoPE)");
  return s;
}

}  // namespace hawada
