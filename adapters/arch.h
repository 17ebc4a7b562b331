// What an architecture's config.json says, read without LibTorch: the summary every stage sizes things
// by, and the typed field readers (errors name the file and key; sizes are bounded before anything is
// allocated by them).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace hawada {

/// The shape of a model as its config.json describes it.
struct ArchSummary {
  std::string architecture;  ///< architectures[0], e.g. "LlamaForCausalLM"
  std::string model_type;    ///< "llama", "vit"
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t hidden = 0;
  int64_t ffn = 0;         ///< intermediate_size
  int64_t vocab_size = 0;  ///< LMs; 0 otherwise
  int64_t num_labels = 0;  ///< classifiers; 0 otherwise
  int64_t image_size = 0;  ///< vision; 0 otherwise
  int64_t patch_size = 0;  ///< vision; 0 otherwise
  bool tied_embeddings = false;
  int64_t channels = 0;        ///< vision: num_channels; 0 otherwise
  bool qkv_bias = false;       ///< bias on the q, k and v projections
  bool out_bias = false;       ///< bias on the attention output projection
  bool mlp_bias = false;       ///< biases on the MLP's matrices
  bool qk_norm = false;        ///< per-head RMSNorm of queries and keys (qwen3)
  int64_t sliding_window = 0;  ///< attention window of the windowed layers; 0: none
  bool pooler = false;         ///< a bare encoder saved with its pooler (vit, bert)
  int64_t embedding_rows = 0;  ///< rows of embedding tables besides the vocabulary (learned positions, token types)
  int64_t positions = 0;       ///< learned position embeddings (BERT: max_position_embeddings; ViT: tokens per image)
  int64_t token_types = 0;     ///< BERT: type_vocab_size
  int64_t pooled = 0;          ///< a pooler's outputs (ViT: pooler_output_size); 0: hidden
  /// transformers derives the head size from hidden_size / num_attention_heads where a config cannot say
  /// otherwise (phi3 with LongRoPE factors): hidden stays heads x head_dim when pruned.
  bool head_dim_from_hidden = false;
  /// Positions the model computes (phi3 with LongRoPE: original_max_position_embeddings; beyond it the long
  /// factors would re-encode every position); 0: no limit.
  int64_t max_positions = 0;
};

/// Typed reads of config.json fields, with errors that name the file and key.
namespace config_field {
/// A positive integer (or non-negative when allow_zero) field; `fallback` when absent (nullptr: required).
/// Counts above kMaxConfigInteger are refused: no config.json sizes an allocation of that many things.
inline constexpr int64_t kMaxConfigInteger = int64_t{1} << 24;
int64_t integer(const nlohmann::json& config, const char* key, const std::filesystem::path& file,
                const int64_t* fallback = nullptr, bool allow_zero = false, int64_t max = kMaxConfigInteger);
bool boolean(const nlohmann::json& config, const char* key, const std::filesystem::path& file, bool fallback);
std::string string(const nlohmann::json& config, const char* key, const std::filesystem::path& file,
                   const std::string& fallback);
/// architectures[0] of config.json, or `fallback` when absent.
std::string architecture(const nlohmann::json& config, const std::string& fallback);
/// A number (integer or float) field; `fallback` when absent.
double number(const nlohmann::json& config, const char* key, const std::filesystem::path& file, double fallback);
}  // namespace config_field

/// The config.json readers of the Hugging Face architectures (adapters/huggingface/*_config.cpp):
/// CheckpointError naming the file and key when a field is missing, mistyped, out of bounds or
/// inconsistent.
ArchSummary summarize_llama_config(const nlohmann::json& config, const std::filesystem::path& file);
ArchSummary summarize_vit_config(const nlohmann::json& config, const std::filesystem::path& file);
/// The LLaMA family (llama, mistral, qwen2, qwen3, gemma3_text, phi3): LLaMA's layout with the differences of
/// `model_type`.
ArchSummary summarize_llama_family_config(const std::string& model_type, const nlohmann::json& config,
                                          const std::filesystem::path& file);
/// Which layers attend within ArchSummary::sliding_window rather than to every earlier token, per layer
/// (gemma3_text: layer_types, or every sliding_window_pattern-th layer full); all false for the others.
std::vector<bool> sliding_layers(const std::string& model_type, const nlohmann::json& config,
                                 const std::filesystem::path& file, int64_t layers);

}  // namespace hawada
