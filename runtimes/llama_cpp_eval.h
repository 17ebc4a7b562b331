// llama.cpp as the runtime that measures an export (`evaluate.runtimes = [..., "llama.cpp"]`): its own tools,
// run as child processes (runtimes/tool.h), on GGUF files that runtimes/llama_cpp.h made.
//   speed:   llama-bench, batch 1: prefill of a prompt and decode of new tokens, tokens/s, per file;
//   quality: llama-perplexity --kl-divergence against a base file of the original model's log-probabilities
//            on our own token windows (written here, by KldBaseWriter), so llama.cpp scores exactly the
//            windows the pipeline scored, with no text round trip. llama-perplexity counts the predictions
//            of the second half of each window (positions n/2 .. n-2 predict n/2+1 .. n-1).
// Rank 0 calls this; nothing here communicates or needs LibTorch.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

namespace hawada {

/// llama.cpp's measuring tools, found in <dir>/build/bin/, <dir>/ or on PATH; ConfigError naming `key` (and
/// what was looked for) when one is missing.
struct LlamaCppMeasure {
  std::filesystem::path bench, perplexity;
};
LlamaCppMeasure find_llama_cpp_measure(const std::filesystem::path& dir, const std::string& key);

/// A llama-perplexity --kl-divergence-base file: `n_windows` windows of `n_ctx` tokens, then, window by window,
/// the quantized log-softmax rows of positions n_ctx/2 .. n_ctx-2 (llama.cpp's own format: per row a float
/// scale, a float minimum log-probability, then n_vocab uint16 steps above it, clipped 16 below the top).
/// Also accumulates the original's NLL over exactly the predictions llama.cpp counts.
class KldBaseWriter {
 public:
  /// Throws IoError naming the file. `tokens` holds n_windows x n_ctx token ids.
  KldBaseWriter(const std::filesystem::path& file, int64_t n_ctx, int64_t n_vocab, std::span<const int32_t> tokens);
  /// The logits of the next window, n_ctx x n_vocab floats, row-major (its rows 0 .. n_ctx-1).
  void add_window(std::span<const float> logits);
  /// Flushes and closes; throws IoError (naming the file) on a short write, a window count that is not the
  /// promised one, or NumericError on a non-finite logit.
  void finish();
  /// exp(mean NLL) of the original on the predictions llama-perplexity counts.
  double ppl() const;

 private:
  std::filesystem::path file_;
  std::ofstream out_;
  int64_t n_ctx_, n_vocab_, n_windows_, done_ = 0;
  std::vector<int32_t> tokens_;
  std::vector<uint16_t> row_;
  double nll_ = 0;
  int64_t count_ = 0;
};

/// What llama-perplexity --kl-divergence says of one GGUF against the base file.
struct KldScore {
  double ppl = 0;       ///< Mean PPL(Q): the GGUF's perplexity on the counted predictions
  double ppl_base = 0;  ///< Mean PPL(base): the base file's (its stored, clipped log-probabilities)
  double kld = 0;       ///< mean KL(base || GGUF) per token
  double same_top = 0;  ///< fraction of predictions whose top token is the base's (0..1)
};
/// Runs llama-perplexity on `gguf` with `base` (n_ctx tokens a window; BOS not added: the windows are used as
/// they are), `threads` threads, its output into `log`. RuntimeToolError (with the log's tail) when it fails or
/// prints no summary.
KldScore llama_perplexity(const LlamaCppMeasure& tools, const std::filesystem::path& gguf,
                          const std::filesystem::path& base, int64_t n_ctx, int threads,
                          const std::filesystem::path& log);

/// llama-bench's mean tokens/s (and standard deviation) of one GGUF, batch 1.
struct BenchScore {
  std::filesystem::path gguf;
  double prefill_tokens_per_s = 0, prefill_sd = 0, decode_tokens_per_s = 0, decode_sd = 0;
};
/// One llama-bench run over all `ggufs`: prefill of `prompt` tokens (0: none timed) and decode of `gen` tokens
/// (after a KV cache of `depth` tokens when > 0), `repeats` repetitions, `threads` threads; its JSON to
/// `json_out`, its log to `log`. One score per file, in order.
std::vector<BenchScore> llama_bench(const LlamaCppMeasure& tools, std::span<const std::filesystem::path> ggufs,
                                    int prompt, int gen, int repeats, int threads,
                                    const std::filesystem::path& json_out, const std::filesystem::path& log,
                                    int64_t depth = 0);

}  // namespace hawada
