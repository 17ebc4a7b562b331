// The config.json of the LLaMA family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
// Qwen3ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM), read without LibTorch (the fuzz target of the reader builds it
// alone).
#include <nlohmann/json.hpp>

#include "adapters/arch.h"
#include "core/base/errors.h"

namespace hawada {
namespace {

namespace cf = config_field;

// Generous bounds (LLaMA-3.1-405B: 126 layers, hidden 16384, 128 heads, head_dim 128): a config.json
// beyond them is refused before anything is sized by it.
constexpr int64_t kDefaultPositions = 4096;  // Phi3Config's max_position_embeddings
constexpr int64_t kMaxLayers = 1024, kMaxHidden = int64_t{1} << 17, kMaxHeads = 4096, kMaxHeadDim = 4096;

// The attention window of the windowed layers, 0 when no layer is windowed. Mistral windows every
// layer unless sliding_window is null; Qwen2/Qwen3 only with use_sliding_window, from layer
// max_window_layers on (or as layer_types lists them).
int64_t sliding_window(const std::string& type, const nlohmann::json& config, const std::filesystem::path& file,
                       int64_t layers) {
  const int64_t default_window = 4096;
  if (type == "gemma3_text") {
    for (bool windowed : sliding_layers(type, config, file, layers))
      if (windowed) return cf::integer(config, "sliding_window", file, &default_window);
    return 0;
  }
  auto it = config.find("sliding_window");
  const bool null_window = it != config.end() && it->is_null();
  if (type == "phi3")  // Phi3Config: None unless set
    return it == config.end() || null_window ? 0 : cf::integer(config, "sliding_window", file);
  if (type == "mistral") return null_window ? 0 : cf::integer(config, "sliding_window", file, &default_window);
  if (type != "qwen2" && type != "qwen3") return 0;
  if (!cf::boolean(config, "use_sliding_window", file, false) || null_window) return 0;
  const int64_t window = cf::integer(config, "sliding_window", file, &default_window);
  if (auto lt = config.find("layer_types"); lt != config.end() && lt->is_array()) {
    for (const auto& t : *lt)
      if (t.is_string() && t.get_ref<const std::string&>() == "sliding_attention") return window;
    return 0;
  }
  const int64_t default_full = 28;
  return cf::integer(config, "max_window_layers", file, &default_full, true) < layers ? window : 0;
}

// Phi3Config checks LongRoPE's factor lists against hidden_size / num_attention_heads (not head_dim).
bool longrope_factors(const nlohmann::json& config) {
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    auto it = config.find(key);
    if (it != config.end() && it->is_object() && (it->contains("short_factor") || it->contains("long_factor")))
      return true;
  }
  return false;
}

}  // namespace

std::vector<bool> sliding_layers(const std::string& type, const nlohmann::json& config,
                                 const std::filesystem::path& file, int64_t layers) {
  std::vector<bool> out(static_cast<size_t>(layers), false);
  if (type == "phi3") {  // every layer, when windowed
    auto it = config.find("sliding_window");
    return std::vector<bool>(static_cast<size_t>(layers), it != config.end() && !it->is_null());
  }
  if (type != "gemma3_text") return out;
  auto lt = config.find("layer_types");
  if (lt == config.end() || lt->is_null()) {
    // Gemma3TextConfig without layer_types: every sliding_window_pattern-th layer is full, the rest windowed.
    const int64_t six = 6;
    const int64_t pattern = cf::integer(config, "sliding_window_pattern", file, &six);
    for (int64_t i = 0; i < layers; ++i) out[static_cast<size_t>(i)] = (i + 1) % pattern != 0;
    return out;
  }
  if (!lt->is_array() || static_cast<int64_t>(lt->size()) != layers)
    throw CheckpointError("'" + file.string() + "': key 'layer_types': expected a list of " + std::to_string(layers) +
                          " entries (num_hidden_layers)");
  for (int64_t i = 0; i < layers; ++i) {
    const auto& t = (*lt)[static_cast<size_t>(i)];
    const std::string v = t.is_string() ? t.get<std::string>() : t.dump();
    if (v != "sliding_attention" && v != "full_attention")
      throw CheckpointError("'" + file.string() + "': key 'layer_types': entry " + std::to_string(i) + " is '" + v +
                            "' (supported: sliding_attention, full_attention)");
    out[static_cast<size_t>(i)] = v == "sliding_attention";
  }
  return out;
}

ArchSummary summarize_llama_family_config(const std::string& type, const nlohmann::json& config,
                                          const std::filesystem::path& file) {
  ArchSummary s;
  s.model_type = type;
  s.architecture = cf::architecture(config, type == "llama"      ? "LlamaForCausalLM"
                                            : type == "mistral"  ? "MistralForCausalLM"
                                            : type == "qwen2"    ? "Qwen2ForCausalLM"
                                            : type == "qwen3"    ? "Qwen3ForCausalLM"
                                            : type == "phi3"     ? "Phi3ForCausalLM"
                                            : type == "gpt_neox" ? "GPTNeoXForCausalLM"
                                                                 : "Gemma3ForCausalLM");
  s.layers = cf::integer(config, "num_hidden_layers", file, nullptr, false, kMaxLayers);
  s.hidden = cf::integer(config, "hidden_size", file, nullptr, false, kMaxHidden);
  s.heads = cf::integer(config, "num_attention_heads", file, nullptr, false, kMaxHeads);
  s.kv_heads = cf::integer(config, "num_key_value_heads", file, &s.heads, false, s.heads);
  s.ffn = cf::integer(config, "intermediate_size", file);
  s.vocab_size = cf::integer(config, "vocab_size", file);
  // Qwen3Config's head_dim defaults to 128, Gemma3TextConfig's to 256; the others derive it from hidden_size / heads.
  const int64_t default_head_dim = type == "qwen3" ? 128 : type == "gemma3_text" ? 256 : s.hidden / s.heads;
  s.head_dim = cf::integer(config, "head_dim", file, &default_head_dim, false, kMaxHeadDim);
  if (type == "gpt_neox") {  // GPTNeoXAttention: head size hidden_size / heads, whatever else the config says
    if (s.hidden % s.heads != 0)
      throw CheckpointError("'" + file.string() + "': hidden_size " + std::to_string(s.hidden) +
                            " is not a multiple of num_attention_heads " + std::to_string(s.heads));
    s.head_dim = s.hidden / s.heads, s.kv_heads = s.heads, s.head_dim_from_hidden = true;
    s.qkv_bias = s.out_bias = cf::boolean(config, "attention_bias", file, true);
    s.mlp_bias = true;  // GPTNeoXMLP's two nn.Linear
  }
  // Every config class of the family but Gemma 3's defaults to untied embeddings.
  s.tied_embeddings = cf::boolean(config, "tie_word_embeddings", file, type == "gemma3_text");
  if (type == "llama") {
    s.qkv_bias = s.out_bias = cf::boolean(config, "attention_bias", file, false);
    s.mlp_bias = cf::boolean(config, "mlp_bias", file, false);
  } else if (type == "qwen2") {
    s.qkv_bias = true;  // Qwen2Attention: q, k, v with bias, o_proj without
  } else if (type == "qwen3" || type == "gemma3_text") {
    s.qkv_bias = s.out_bias = cf::boolean(config, "attention_bias", file, false);
    s.qk_norm = true;
  }
  if (type == "phi3" && longrope_factors(config)) {
    s.head_dim_from_hidden = true;
    const int64_t max_pos = cf::integer(config, "max_position_embeddings", file, &kDefaultPositions);
    const int64_t original = cf::integer(config, "original_max_position_embeddings", file, &max_pos);
    s.max_positions = original;
    for (const char* key : {"rope_parameters", "rope_scaling"})
      if (auto it = config.find(key); it != config.end() && it->is_object()) {
        s.max_positions = cf::integer(*it, "original_max_position_embeddings", file, &original);
        break;
      }
  }
  if (type == "gemma3_text") {
    if (cf::boolean(config, "use_bidirectional_attention", file, false))
      throw CheckpointError("'" + file.string() +
                            "': use_bidirectional_attention = true is an encoder, not a causal LM (not supported)");
    if (s.hidden % s.heads != 0)  // Gemma3TextConfig validates it
      throw CheckpointError("'" + file.string() + "': hidden_size " + std::to_string(s.hidden) +
                            " is not a multiple of num_attention_heads " + std::to_string(s.heads));
  }
  s.sliding_window = sliding_window(type, config, file, s.layers);
  if (s.heads % s.kv_heads != 0)
    throw CheckpointError("'" + file.string() + "': num_attention_heads " + std::to_string(s.heads) +
                          " is not a multiple of num_key_value_heads " + std::to_string(s.kv_heads));
  if (s.head_dim < 1 || (s.head_dim_from_hidden && s.hidden / s.heads < 1))  // e.g. hidden_size < heads, no head_dim
    throw CheckpointError("'" + file.string() + "': head_dim is " + std::to_string(s.head_dim) + " (hidden_size " +
                          std::to_string(s.hidden) + ", num_attention_heads " + std::to_string(s.heads) +
                          "): it must be at least 1");
  if (s.head_dim % 2 != 0)
    throw CheckpointError("'" + file.string() + "': head_dim " + std::to_string(s.head_dim) + " must be even (RoPE)");
  return s;
}

ArchSummary summarize_llama_config(const nlohmann::json& config, const std::filesystem::path& file) {
  return summarize_llama_family_config("llama", config, file);
}

}  // namespace hawada
