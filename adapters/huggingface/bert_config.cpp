// BERT's config.json (transformers' BertConfig), read without LibTorch.
#include "adapters/huggingface/bert_config.h"

#include <nlohmann/json.hpp>

#include "core/base/errors.h"

namespace hawada {
namespace {

namespace cf = config_field;

constexpr int64_t kMaxLayers = 1024, kMaxHidden = int64_t{1} << 17, kMaxHeads = 4096, kMaxPositions = int64_t{1} << 20;

[[noreturn]] void refuse(const std::filesystem::path& file, const char* key, const std::string& what) {
  throw CheckpointError("'" + file.string() + "': key '" + key + "': " + what);
}

}  // namespace

ArchSummary summarize_bert_config(const nlohmann::json& config, const std::filesystem::path& file) {
  ArchSummary s;
  s.model_type = "bert";
  s.architecture = cf::architecture(config, "BertModel");
  // The encoder alone: a head (masked LM, classification) would put out something else than hidden states.
  if (s.architecture != "BertModel")
    refuse(file, "architectures",
           "'" + s.architecture +
               "' is not supported (supported: BertModel, the encoder "
               "that sentence-transformers models such as all-MiniLM-L6-v2 save)");
  s.layers = cf::integer(config, "num_hidden_layers", file, nullptr, false, kMaxLayers);
  s.hidden = cf::integer(config, "hidden_size", file, nullptr, false, kMaxHidden);
  s.heads = cf::integer(config, "num_attention_heads", file, nullptr, false, kMaxHeads);
  s.kv_heads = s.heads;
  s.ffn = cf::integer(config, "intermediate_size", file);
  s.vocab_size = cf::integer(config, "vocab_size", file);
  // BertConfig's validation: the attention head size is hidden_size / num_attention_heads.
  if (s.hidden % s.heads != 0)
    throw CheckpointError("'" + file.string() + "': hidden_size " + std::to_string(s.hidden) +
                          " is not a multiple of num_attention_heads " + std::to_string(s.heads));
  s.head_dim = s.hidden / s.heads;
  s.qkv_bias = s.out_bias = s.mlp_bias = true;  // every BERT linear layer has a bias
  const int64_t positions = 512, types = 2;
  const int64_t max_positions = cf::integer(config, "max_position_embeddings", file, &positions, false, kMaxPositions);
  const int64_t type_vocab = cf::integer(config, "type_vocab_size", file, &types, false, kMaxPositions);
  s.embedding_rows = max_positions + type_vocab;
  s.positions = max_positions;
  s.token_types = type_vocab;
  if (const std::string p = cf::string(config, "position_embedding_type", file, "absolute"); p != "absolute")
    refuse(file, "position_embedding_type", "'" + p + "' is not supported (supported: absolute)");
  if (cf::boolean(config, "is_decoder", file, false)) refuse(file, "is_decoder", "a decoder BERT is not supported");
  if (const std::string act = cf::string(config, "hidden_act", file, "gelu"); act != "gelu")
    refuse(file, "hidden_act", "'" + act + "' is not supported (supported: gelu)");
  return s;
}

}  // namespace hawada
