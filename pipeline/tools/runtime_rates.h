// The decode budget's rates measured in a deployment runtime (issue 36): what `budget.device_bandwidth` and
// `budget.layer_overhead_s` must be for the cost model's decode latency (latency_mode = "decode") to describe
// llama.cpp on this machine rather than transformers or a GPU roofline.
//
// Cut copies of the dense model (its own weights sliced to a few shapes that span the search's: fewer blocks,
// narrower FFNs, fewer heads; llama.cpp's speed does not depend on the values) are converted and quantized by
// llama.cpp's own tools and timed in one llama-bench run (batch 1, decode at a KV cache of `context` tokens).
// The decode seconds per token are fitted, by least squares, in the cost model's own form:
//   seconds = bytes(shape) / device_bandwidth + blocks x layer_overhead_s
// where bytes(shape) is what core/prune/cost_model counts for one decode step (2-byte elements; a quantized
// type's smaller bytes go into the fitted bandwidth). `hawada-pipeline profile --runtime llama.cpp` writes the
// rates file; a run with `budget.runtime = "llama.cpp"` measures it itself unless `budget.rates` names one.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>

#include "core/format/model_shape.h"
#include "core/prune/cost_model.h"
#include "runtimes/gguf_type.h"

namespace hawada {

struct RuntimeRatesOptions {
  std::filesystem::path llama_cpp;  ///< llama.cpp's directory (export.llama_cpp)
  std::string python = "python3";   ///< runs the converter (export.python)
  GgufType type = GgufType::q8_0;   ///< the GGUF type timed (budget.gguf)
  int threads = 0;                  ///< llama-bench threads; 0 = every CPU of this machine
  int64_t context = 256;            ///< KV cache tokens of the timed decode (budget.decode_context)
  int repeats = 3;                  ///< llama-bench repetitions (its mean counts)
};

/// What a rates file says.
struct RuntimeRates {
  std::string runtime = "llama.cpp";
  GgufType type = GgufType::q8_0;
  int threads = 0;  ///< the threads that measured (never 0 in a file)
  int64_t context = 0;
  DeviceRates rates;
  double max_fit_error = 0;  ///< the largest |fitted / measured - 1| over the timed shapes
  /// The timed model's dense shape (the first row): layers, hidden, heads, kv heads, FFN.
  std::array<int64_t, 5> dense{};
};

/// The dense shape as RuntimeRates::dense lists it.
std::array<int64_t, 5> shape_key(const ModelShape& shape);

/// Measures and writes `out` (JSON with an XXH64 of its content, written atomically). `work_dir` holds the
/// cut models, their GGUF files and the tools' logs (kept; each tool's log is named in its error). Throws
/// ConfigError when llama.cpp's tools are missing, RuntimeToolError when one fails, CheckpointError when the
/// model has too few distinct cut shapes to fit two rates.
RuntimeRates measure_runtime_rates(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                                   const std::filesystem::path& work_dir, const RuntimeRatesOptions& options);

/// Reads a rates file; CheckpointError naming the file when it is malformed or does not match its checksum.
RuntimeRates read_runtime_rates(const std::filesystem::path& file);

}  // namespace hawada
