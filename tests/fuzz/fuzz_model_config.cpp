// libFuzzer target: an architecture's config.json reader (the adapter's, without LibTorch). Any input
// must parse to a summary whose sizes are within the readers' bounds, or throw CheckpointError naming
// the file; never crash, recurse without bound or allocate by the file's numbers.
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "adapters/arch.h"
#include "adapters/huggingface/bert_config.h"
#include "core/base/errors.h"
#include "core/base/json_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  // As read_json_file does: the depth check first, then the parse.
  if (!hawada::json_depth_problem(text).empty()) return 0;
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return 0;
  // Every reader: the LLaMA family's (one per model_type: windows, head_dim defaults, Gemma's layer kinds,
  // Phi-3's LongRoPE detection differ), ViT's, BERT's.
  for (const char* type : {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "gpt_neox", "vit", "bert"}) {
    try {
      const std::string_view t(type);
      const hawada::ArchSummary s = t == "vit"    ? hawada::summarize_vit_config(j, "fuzz/config.json")
                                    : t == "bert" ? hawada::summarize_bert_config(j, "fuzz/config.json")
                                                  : hawada::summarize_llama_family_config(type, j, "fuzz/config.json");
      if (s.embedding_rows < 0) __builtin_trap();
      if (s.sliding_window < 0) __builtin_trap();
      if (s.layers <= 0 || s.layers > 1024 || s.heads <= 0 || s.hidden <= 0 || s.head_dim <= 0) __builtin_trap();
      if (s.kv_heads <= 0 || s.heads % s.kv_heads != 0) __builtin_trap();
      // Gemma 3's layer kinds (layer_types or sliding_window_pattern), one per layer.
      if (t != "vit" && t != "bert" &&
          static_cast<int64_t>(hawada::sliding_layers(type, j, "fuzz/config.json", s.layers).size()) != s.layers)
        __builtin_trap();
    } catch (const hawada::CheckpointError& e) {
      if (std::string(e.what()).find("fuzz/config.json") == std::string::npos) __builtin_trap();
    }
  }
  return 0;
}
