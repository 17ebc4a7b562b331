#include "adapters/huggingface/llama.h"

#include <nlohmann/json.hpp>

#include "core/errors.h"

namespace hawada {

ArchSummary LlamaAdapter::summarize(const nlohmann::json& config, const std::filesystem::path& file) const {
  namespace cf = config_field;
  ArchSummary s;
  s.model_type = "llama";
  s.architecture = "LlamaForCausalLM";
  if (auto a = config.find("architectures"); a != config.end() && a->is_array() && !a->empty() && (*a)[0].is_string())
    s.architecture = (*a)[0].get<std::string>();
  s.layers = cf::integer(config, "num_hidden_layers", file);
  s.hidden = cf::integer(config, "hidden_size", file);
  s.heads = cf::integer(config, "num_attention_heads", file);
  s.kv_heads = cf::integer(config, "num_key_value_heads", file, &s.heads);
  s.ffn = cf::integer(config, "intermediate_size", file);
  s.vocab_size = cf::integer(config, "vocab_size", file);
  const int64_t default_head_dim = s.hidden / s.heads;
  s.head_dim = cf::integer(config, "head_dim", file, &default_head_dim);
  // LlamaConfig's default is untied.
  s.tied_embeddings = cf::boolean(config, "tie_word_embeddings", file, false);
  if (s.heads % s.kv_heads != 0)
    throw CheckpointError("'" + file.string() + "': num_attention_heads " + std::to_string(s.heads) +
                          " is not a multiple of num_key_value_heads " + std::to_string(s.kv_heads));
  return s;
}

}  // namespace hawada
