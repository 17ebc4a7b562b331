#include "stages/evaluate_llama_cpp.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/log.h"
#include "runtimes/llama_cpp.h"
#include "runtimes/llama_cpp_eval.h"
#include "stages/layout.h"
#include "training/student.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// llama-bench's workload: batch 1, the same prompt and new tokens as evaluate's own generate measurement.
constexpr int kPromptTokens = 256, kNewTokens = 64, kBenchRepeats = 3;

// The fp32 reference on the windows llama.cpp scores: the base file written, and both models' perplexity on
// exactly the predictions llama-perplexity counts.
struct Reference {
  int64_t windows = 0, window_tokens = 0, predictions = 0;
  double original_ppl = 0, export_ppl = 0;
};

// The windows (token ids as int32) of samples [first, first + count) that llama.cpp can score as they are: no
// padding, the length of the first such window.
std::vector<at::Tensor> full_windows(const DataSource& data, int64_t first, int64_t count) {
  std::vector<at::Tensor> windows;
  for (int64_t i = first; i < first + count; ++i) {
    const Batch b = data.read(i, 1);
    if (b.attention_mask.defined() && !b.attention_mask.ne(0).all().item<bool>()) continue;
    if (!windows.empty() && b.input_ids.size(1) != windows.front().size(0)) continue;
    windows.push_back(b.input_ids.reshape({-1}).to(at::kInt).contiguous());
  }
  return windows;
}

Reference write_reference(const LoadedModel& lm, const HfCheckpoint& exported, const std::vector<at::Tensor>& windows,
                          const fs::path& base, const at::Device& device) {
  at::NoGradGuard no_grad;
  const auto original = lm.adapter->load(lm.checkpoint, {at::kFloat, device});
  const auto student = lm.adapter->load(exported, {at::kFloat, device});
  const at::Tensor all = at::stack(windows);
  const int64_t n_ctx = all.size(1), from = n_ctx / 2;
  const auto logits = [&](const Model& m, const at::Tensor& ids) {
    Batch b;
    b.input_ids = ids.to(at::kLong).view({1, n_ctx}).to(device);
    const at::Tensor f = m.features(b);
    return m.head(f.reshape({n_ctx, f.size(-1)})).to(at::kFloat).cpu().contiguous();
  };
  Reference r{static_cast<int64_t>(windows.size()), n_ctx, 0, 0, 0};
  std::unique_ptr<KldBaseWriter> writer;
  double student_nll = 0;
  for (const at::Tensor& ids : windows) {
    const at::Tensor tl = logits(*original, ids);
    if (!writer)
      writer = std::make_unique<KldBaseWriter>(
          base, n_ctx, tl.size(1), std::span<const int32_t>(all.data_ptr<int32_t>(), static_cast<size_t>(all.numel())));
    writer->add_window(std::span<const float>(tl.data_ptr<float>(), static_cast<size_t>(tl.numel())));
    const at::Tensor sl = at::log_softmax(logits(*student, ids).slice(0, from, n_ctx - 1).to(at::kDouble), -1);
    const at::Tensor next = ids.slice(0, from + 1, n_ctx).to(at::kLong).view({-1, 1});
    student_nll -= sl.gather(-1, next).sum().item<double>();
    r.predictions += n_ctx - 1 - from;
  }
  writer->finish();
  r.original_ppl = writer->ppl();
  r.export_ppl = std::exp(student_nll / static_cast<double>(std::max<int64_t>(r.predictions, 1)));
  if (!std::isfinite(r.original_ppl) || !std::isfinite(r.export_ppl))
    throw NumericError(
        fmt::format("evaluate: llama.cpp: the fp32 reference perplexity is not finite (original {}, "
                    "export {})",
                    r.original_ppl, r.export_ppl));
  return r;
}

// The export's GGUF files, by type, from export/summary.json ("gguf": [{type, file, bytes}]).
std::map<std::string, fs::path> export_gguf_files(const RunLayout& layout) {
  const json summary = read_json_file(layout.export_summary());
  std::map<std::string, fs::path> files;
  for (const json& g : summary.value("gguf", json::array())) files[g.at("type")] = g.at("file").get<std::string>();
  return files;
}

json score_json(const fs::path& file, const KldScore& q, const BenchScore& b) {
  return {{"file", file.filename().string()},
          {"bytes", static_cast<uint64_t>(fs::file_size(file))},
          {"ppl", q.ppl},
          {"kld_to_fp32_original", q.kld},
          {"same_top_as_fp32_original", q.same_top},
          {"prefill_tokens_per_s", b.prefill_tokens_per_s},
          {"prefill_sd", b.prefill_sd},
          {"decode_tokens_per_s", b.decode_tokens_per_s},
          {"decode_sd", b.decode_sd}};
}

}  // namespace

json measure_llama_cpp(const StageContext& ctx, const LoadedModel& lm, const HfCheckpoint& exported,
                       const DataSource& data, int64_t first, int64_t count, const at::Device& device) {
  const Config& c = ctx.config;
  const RunLayout layout(ctx.run_dir);
  const int threads =
      c.evaluate.threads > 0 ? c.evaluate.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const LlamaCpp make = find_llama_cpp(c.export_.llama_cpp, c.export_.python, c.export_.gguf);
  const LlamaCppMeasure tools = find_llama_cpp_measure(c.export_.llama_cpp, "evaluate.runtimes");
  const fs::path dir = layout.evaluate() / "llama.cpp", logs = dir / "logs";
  fs::create_directories(logs);

  // llama-perplexity prints its summary only from 100 counted predictions on.
  const std::vector<at::Tensor> windows = full_windows(data, first, count);
  const int64_t n_ctx = windows.empty() ? 0 : windows.front().size(0);
  const int64_t predictions = static_cast<int64_t>(windows.size()) * std::max<int64_t>(n_ctx - 1 - n_ctx / 2, 0);
  if (predictions < 100)
    throw ConfigError(fmt::format(
        "{}: evaluate.runtimes: llama.cpp's perplexity needs at least 100 predictions (it counts the second half of "
        "each window without padding), and the {} evaluation samples give {} ({} windows of {} tokens): use more "
        "samples (evaluate.data, evaluate.samples, train.holdout) or longer ones",
        c.source.string(), count, predictions, windows.size(), n_ctx));
  const std::map<std::string, fs::path> exported_files = export_gguf_files(layout);
  const std::vector<GgufFile> originals = with_context("evaluate: llama.cpp: the original model: ", [&] {
    return write_gguf(make, c.model.path, dir / "original-gguf", "original", c.export_.gguf, threads, logs);
  });

  const fs::path base = dir / "original-fp32.kld";
  const Reference ref = write_reference(lm, exported, windows, base, device);

  std::vector<fs::path> bench_files;
  std::vector<std::pair<KldScore, KldScore>> quality;
  for (const GgufFile& o : originals) {
    const std::string type(gguf_type_name(o.type));
    const auto it = exported_files.find(type);
    if (it == exported_files.end())
      throw CheckpointError("evaluate: llama.cpp: export/summary.json lists no " + type + " GGUF file of the export");
    const auto score = [&](const fs::path& gguf, const std::string& who) {
      return llama_perplexity(tools, gguf, base, ref.window_tokens, threads,
                              logs / ("perplexity-" + who + "-" + type + ".log"));
    };
    KldScore original = score(o.path, "original");  // in this order (the logs' times read as the run went)
    quality.emplace_back(original, score(it->second, "export"));
    bench_files.insert(bench_files.end(), {o.path, it->second});
  }
  fs::remove(base);
  int prompt = kPromptTokens;
  if (lm.arch.max_positions > 0)
    prompt = static_cast<int>(std::min<int64_t>(prompt, lm.arch.max_positions - kNewTokens));
  // Prefill of the prompt from an empty cache; decode after it (a KV cache of the prompt), as a user's generation
  // runs and as transformers' decode is measured (llama.cpp decodes markedly slower at a context than at none).
  std::vector<BenchScore> speed = llama_bench(tools, bench_files, std::max(prompt, 1), kNewTokens, kBenchRepeats,
                                              threads, dir / "bench.json", logs / "bench.log");
  const std::vector<BenchScore> decode = llama_bench(tools, bench_files, 0, kNewTokens, kBenchRepeats, threads,
                                                     dir / "bench-decode.json", logs / "bench-decode.log", prompt);
  for (size_t i = 0; i < speed.size(); ++i)
    speed[i].decode_tokens_per_s = decode[i].decode_tokens_per_s, speed[i].decode_sd = decode[i].decode_sd;

  json types = json::array();
  for (size_t i = 0; i < originals.size(); ++i) {
    const BenchScore &bo = speed[2 * i], &be = speed[2 * i + 1];
    types.push_back({{"type", gguf_type_name(originals[i].type)},
                     {"original", score_json(bench_files[2 * i], quality[i].first, bo)},
                     {"export", score_json(bench_files[2 * i + 1], quality[i].second, be)},
                     {"decode_speedup", be.decode_tokens_per_s / bo.decode_tokens_per_s},
                     {"prefill_speedup", be.prefill_tokens_per_s / bo.prefill_tokens_per_s},
                     {"ppl_ratio", quality[i].second.ppl / quality[i].first.ppl}});
  }
  return {{"threads", threads},
          {"prompt_tokens", prompt},
          {"new_tokens", kNewTokens},
          {"decode_context", prompt},
          {"repetitions", kBenchRepeats},
          {"windows", ref.windows},
          {"window_tokens", ref.window_tokens},
          {"predictions", ref.predictions},
          {"fp32", {{"original_ppl", ref.original_ppl}, {"export_ppl", ref.export_ppl}}},
          {"types", types}};
}

std::string llama_cpp_phrase(const json& result) {
  if (!result.contains("llama_cpp")) return "";
  std::string line = "; llama.cpp (" + std::to_string(result["llama_cpp"]["threads"].get<int>()) + " threads):";
  for (const json& t : result["llama_cpp"]["types"])
    line +=
        fmt::format(" {} decode {:.2f}x, prefill {:.2f}x, perplexity {:.4g} against {:.4g} ({:.3f}x);",
                    t["type"].get<std::string>(), t["decode_speedup"].get<double>(), t["prefill_speedup"].get<double>(),
                    t["export"]["ppl"].get<double>(), t["original"]["ppl"].get<double>(), t["ppl_ratio"].get<double>());
  line.pop_back();
  return line;
}

}  // namespace hawada
