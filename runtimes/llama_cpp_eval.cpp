#include "runtimes/llama_cpp_eval.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <regex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/fs.h"
#include "runtimes/tool.h"

namespace hawada {
namespace fs = std::filesystem;
namespace {

// Starts a measuring tool; one that does not start is the configuration's fault (the tools were found).
void run_measure(const std::vector<std::string>& argv, const fs::path& log, const std::string& what,
                 const fs::path& stdout_file = {}) {
  const ToolRun run = run_tool(argv, log, stdout_file);
  if (run.start_errno != 0)
    throw ConfigError(fmt::format("export.llama_cpp: cannot start {} ({})", argv[0], std::strerror(run.start_errno)));
  check_tool(run, argv, log, what);
}

// The last "<label> : <number>" (or "<label>: <number>") of a tool's log.
double summary_number(const std::string& text, const std::string& label, const std::vector<std::string>& argv,
                      const fs::path& log) {
  const std::regex pattern(label + R"(\s*:\s*([-+0-9.eE]+|nan|inf))");
  double value = NAN;
  bool found = false;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), pattern); it != std::sregex_iterator(); ++it)
    value = std::strtod((*it)[1].str().c_str(), nullptr), found = true;
  if (!found || !std::isfinite(value))
    throw RuntimeToolError(
        fmt::format("llama-perplexity: {} exited 0 but printed no finite '{}'; the last lines of {}:\n{}",
                    command_line(argv), label, log.string(), log_tail(log)));
  return value;
}

// llama.cpp's nearest_int (a float bit trick): round to nearest, ties to even, as nearbyint does by default.
inline int nearest_int(float v) { return static_cast<int>(std::nearbyint(v)); }

}  // namespace

LlamaCppMeasure find_llama_cpp_measure(const fs::path& dir, const std::string& key) {
  LlamaCppMeasure tools;
  for (auto [name, path] : {std::pair{"llama-bench", &tools.bench}, std::pair{"llama-perplexity", &tools.perplexity}}) {
    *path = find_program(dir, name);
    if (path->empty())
      throw ConfigError(
          fmt::format("{}: no {} (expected an executable '{}', '{}' or {} on PATH; bash "
                      "launch/llama_cpp.sh builds it)",
                      key, name, (dir / "build" / "bin" / name).string(), (dir / name).string(), name));
  }
  return tools;
}

KldBaseWriter::KldBaseWriter(const fs::path& file, int64_t n_ctx, int64_t n_vocab, std::span<const int32_t> tokens)
    : file_(file), n_ctx_(n_ctx), n_vocab_(n_vocab), tokens_(tokens.begin(), tokens.end()) {
  HAWADA_ASSERT(n_ctx >= 4 && n_vocab > 0 && !tokens.empty() && tokens.size() % n_ctx == 0,
                "KldBaseWriter: windows of at least 4 tokens");
  n_windows_ = static_cast<int64_t>(tokens.size()) / n_ctx;
  out_.open(file, std::ios::binary | std::ios::trunc);
  if (!out_) throw IoError("cannot write the llama-perplexity base file '" + file.string() + "'");
  const uint32_t ctx = static_cast<uint32_t>(n_ctx);
  const int32_t vocab = static_cast<int32_t>(n_vocab), chunks = static_cast<int32_t>(n_windows_);
  out_.write("_logits_", 8);
  out_.write(reinterpret_cast<const char*>(&ctx), sizeof ctx);
  out_.write(reinterpret_cast<const char*>(&vocab), sizeof vocab);
  out_.write(reinterpret_cast<const char*>(&chunks), sizeof chunks);
  out_.write(reinterpret_cast<const char*>(tokens_.data()), static_cast<std::streamsize>(tokens_.size() * 4));
  row_.assign(static_cast<size_t>(2 * ((n_vocab + 1) / 2) + 4), 0);
}

void KldBaseWriter::add_window(std::span<const float> logits) {
  HAWADA_ASSERT(static_cast<int64_t>(logits.size()) == n_ctx_ * n_vocab_ && done_ < n_windows_,
                "KldBaseWriter: one window of n_ctx x n_vocab logits at a time");
  const int32_t* tokens = tokens_.data() + done_ * n_ctx_;
  for (int64_t pos = n_ctx_ / 2; pos < n_ctx_ - 1; ++pos) {
    const float* l = logits.data() + pos * n_vocab_;
    float mx = l[0], mn = l[0];
    for (int64_t i = 1; i < n_vocab_; ++i) mx = std::max(mx, l[i]), mn = std::min(mn, l[i]);
    if (!std::isfinite(mx) || !std::isfinite(mn))
      throw NumericError(fmt::format("llama-perplexity base file '{}': a non-finite logit in window {}, position {}",
                                     file_.string(), done_, pos));
    mn = std::max(mn, mx - 16);
    double sum = 0;
    for (int64_t i = 0; i < n_vocab_; ++i) sum += std::exp(l[i] - mx);
    const float lse = static_cast<float>(std::log(sum));
    const float scale = (mx - mn) / 65535.f, min_log_prob = mn - mx - lse;
    std::memcpy(row_.data(), &scale, 4);
    std::memcpy(row_.data() + 2, &min_log_prob, 4);
    uint16_t* q = row_.data() + 4;
    if (scale > 0) {
      const float inv = 1 / scale;
      for (int64_t i = 0; i < n_vocab_; ++i)
        q[i] = l[i] > mn ? static_cast<uint16_t>(nearest_int(inv * (l[i] - mn))) : 0;
    } else {
      std::fill(q, q + n_vocab_, uint16_t{0});
    }
    out_.write(reinterpret_cast<const char*>(row_.data()), static_cast<std::streamsize>(row_.size() * 2));
    const int32_t next = tokens[pos + 1];
    HAWADA_ASSERT(next >= 0 && next < n_vocab_, "KldBaseWriter: a token outside the vocabulary");
    nll_ += static_cast<double>(mx) + lse - l[next];
    ++count_;
  }
  ++done_;
}

void KldBaseWriter::finish() {
  out_.flush();
  const bool ok = static_cast<bool>(out_);
  out_.close();
  if (!ok || done_ != n_windows_)
    throw IoError(fmt::format("llama-perplexity base file '{}': {} ({} of {} windows written)", file_.string(),
                              ok ? "incomplete" : "short write", done_, n_windows_));
}

double KldBaseWriter::ppl() const { return std::exp(nll_ / std::max<int64_t>(count_, 1)); }

KldScore llama_perplexity(const LlamaCppMeasure& tools, const fs::path& gguf, const fs::path& base, int64_t n_ctx,
                          int threads, const fs::path& log) {
  const std::vector<std::string> argv = {tools.perplexity.string(),
                                         "-m",
                                         gguf.string(),
                                         "--kl-divergence-base",
                                         base.string(),
                                         "--kl-divergence",
                                         "-c",
                                         std::to_string(n_ctx),
                                         "-b",
                                         std::to_string(n_ctx),
                                         "-t",
                                         std::to_string(std::max(threads, 1)),
                                         "--override-kv",
                                         "tokenizer.ggml.add_bos_token=bool:false"};
  run_measure(argv, log, "llama-perplexity on " + gguf.filename().string());
  const std::string text = read_text_file(log);
  KldScore s;
  s.ppl = summary_number(text, R"(Mean PPL\(Q\))", argv, log);
  s.ppl_base = summary_number(text, R"(Mean PPL\(base\))", argv, log);
  s.kld = summary_number(text, R"(Mean\s+KLD)", argv, log);
  s.same_top = summary_number(text, R"(Same top p)", argv, log) / 100.0;
  return s;
}

std::vector<BenchScore> llama_bench(const LlamaCppMeasure& tools, std::span<const fs::path> ggufs, int prompt, int gen,
                                    int repeats, int threads, const fs::path& json_out, const fs::path& log,
                                    int64_t depth) {
  std::vector<std::string> argv = {tools.bench.string(),
                                   "-o",
                                   "json",
                                   "-t",
                                   std::to_string(std::max(threads, 1)),
                                   "-p",
                                   std::to_string(prompt),
                                   "-n",
                                   std::to_string(gen),
                                   "-r",
                                   std::to_string(std::max(repeats, 1))};
  if (depth > 0) argv.insert(argv.end(), {"-d", std::to_string(depth)});
  for (const fs::path& g : ggufs) argv.insert(argv.end(), {"-m", g.string()});
  run_measure(argv, log, "llama-bench", json_out);
  const nlohmann::json rows = nlohmann::json::parse(read_text_file(json_out), nullptr, false);
  std::vector<BenchScore> scores(ggufs.size());
  std::vector<int> seen(ggufs.size(), 0);
  for (size_t i = 0; i < ggufs.size(); ++i) scores[i].gguf = ggufs[i];
  if (rows.is_array())
    for (const auto& r : rows) {
      if (!r.is_object() || !r.contains("model_filename") || !r.contains("avg_ts")) continue;
      const std::string file = r["model_filename"].get<std::string>();
      const auto it = std::find_if(ggufs.begin(), ggufs.end(), [&](const fs::path& g) { return g.string() == file; });
      if (it == ggufs.end()) continue;
      const size_t i = static_cast<size_t>(it - ggufs.begin());
      BenchScore& s = scores[i];
      const bool decode = r.value("n_gen", 0) > 0;
      (decode ? s.decode_tokens_per_s : s.prefill_tokens_per_s) = r["avg_ts"].get<double>();
      (decode ? s.decode_sd : s.prefill_sd) = r.value("stddev_ts", 0.0);
      seen[i] |= decode ? 2 : 1;
    }
  const int wanted = prompt > 0 ? 3 : 2;  // no prompt asked: decode only
  for (size_t i = 0; i < ggufs.size(); ++i)
    if (seen[i] != wanted || !(scores[i].decode_tokens_per_s > 0) ||
        (prompt > 0 && !(scores[i].prefill_tokens_per_s > 0)))
      throw RuntimeToolError(
          fmt::format("llama-bench: {} exited 0 but {} holds no {} speed of {}; "
                      "the last lines of {}:\n{}",
                      command_line(argv), json_out.string(), prompt > 0 ? "prefill and decode" : "decode",
                      ggufs[i].string(), log.string(), log_tail(log)));
  return scores;
}

}  // namespace hawada
