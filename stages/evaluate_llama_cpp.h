// Stage evaluate, the llama.cpp part (evaluate.runtimes holds "llama.cpp"): the export's GGUF files (export.gguf)
// against the original model converted and quantized the same way, measured by llama.cpp's own tools
// (runtimes/llama_cpp_eval.h) on rank 0:
//   speed:   llama-bench, batch 1, evaluate.threads threads: prefill of a 256-token prompt and decode of 64 tokens;
//   quality: llama-perplexity on the same held-out windows as the rest of evaluate, against the original's fp32
//            log-probabilities (our forward, which equals transformers'), on the predictions it counts (the second
//            half of each window); beside it the fp32 perplexity of both models on exactly those predictions, so
//            what the cut costs on top of each quantization reads off one row (prune + quantize).
// The original's GGUF files and the base file live in <run_dir>/evaluate/llama.cpp/ (the base file is removed
// once scored: 2 bytes per vocabulary entry per prediction).
#pragma once

#include <cstdint>

#include <ATen/Device.h>
#include <nlohmann/json_fwd.hpp>

#include "core/data/data.h"
#include "core/io/checkpoint.h"
#include "stages/stage.h"

namespace hawada {

struct LoadedModel;

/// The "llama_cpp" result of evaluate: settings, the fp32 reference perplexities and one row per GGUF type
/// (original and export: file, bytes, perplexity, KL to the fp32 original, top-token agreement, prefill and
/// decode tokens/s; the speed-ups and the perplexity ratio). Windows with padding are skipped.
nlohmann::json measure_llama_cpp(const StageContext& ctx, const LoadedModel& lm, const HfCheckpoint& exported,
                                 const DataSource& data, int64_t first, int64_t count, const at::Device& device);

/// The log line's part for it.
std::string llama_cpp_phrase(const nlohmann::json& result);

}  // namespace hawada
