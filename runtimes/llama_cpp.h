// llama.cpp as a deployment runtime: GGUF files of a Hugging Face directory, made by llama.cpp's own tools
// (convert_hf_to_gguf.py for F16, llama-quantize for the other types) run as child processes (runtimes/tool.h).
// Rank 0 calls this; nothing here communicates.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtimes/gguf_type.h"

namespace hawada {

/// "f16", "q8_0", "q4_k_m": the TOML spelling of `export.gguf` and the file-name suffix.
std::string_view gguf_type_name(GgufType type);

/// llama.cpp's tools, as found from `export.llama_cpp` and `export.python`.
struct LlamaCpp {
  std::filesystem::path converter;  ///< <dir>/convert_hf_to_gguf.py
  std::filesystem::path quantize;   ///< llama-quantize; empty when only F16 is asked for
  std::string python;               ///< runs the converter and the Gemma 3 fix-up
};

/// Finds the tools for `types`: the converter in `dir`, and (when a quantized type is asked for)
/// llama-quantize in <dir>/build/bin/, in <dir>/, or on PATH. Throws ConfigError naming `export.llama_cpp`
/// (expected vs got) when one is missing.
LlamaCpp find_llama_cpp(const std::filesystem::path& dir, const std::string& python, std::span<const GgufType> types);

/// One GGUF file written.
struct GgufFile {
  GgufType type;
  std::filesystem::path path;
  uint64_t bytes = 0;
};

/// Writes <out_dir>/<name>-<type>.gguf of the Hugging Face directory `hf_dir` for each of `types` (F16 by the
/// converter, then llama-quantize from it with `threads` threads; Gemma 3 files get the per-layer attention
/// pattern, see gguf_layer_pattern.py). Everything is written into a partial sibling of `out_dir` and published
/// by rename, replacing an earlier `out_dir` only once the new one is whole. The tools' output goes to
/// <log_dir>/<step>.log. Throws RuntimeToolError (a tool exited non-zero or wrote nothing; with the log's tail),
/// ConfigError naming `export.python` when the Python cannot be started.
std::vector<GgufFile> write_gguf(const LlamaCpp& tools, const std::filesystem::path& hf_dir,
                                 const std::filesystem::path& out_dir, const std::string& name,
                                 std::span<const GgufType> types, int threads, const std::filesystem::path& log_dir);

}  // namespace hawada
