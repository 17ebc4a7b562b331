// The GGUF file types the pipeline asks llama.cpp's tools for: a leaf header (no dependencies) so the run
// settings (training/settings.h, `export.gguf`) and the llama.cpp runtime (runtimes/llama_cpp.h) share one type.
#pragma once

namespace hawada {

/// A GGUF file type llama.cpp makes of the export (`export.gguf`): the converter's F16, and llama-quantize's
/// Q8_0 and Q4_K_M (llama-quantize falls back to other types for rows that are not a multiple of the block).
enum class GgufType { f16, q8_0, q4_k_m };

}  // namespace hawada
