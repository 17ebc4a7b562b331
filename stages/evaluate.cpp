#include "stages/evaluate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/dist/device.h"
#include "core/dist/mpi_session.h"
#include "core/io/checkpoint.h"
#include "core/prune/cost_model.h"
#include "core/prune/distill_loss.h"
#include "stages/evaluate_llama_cpp.h"
#include "stages/host_memory.h"
#include "stages/model_card.h"
#include "training/student.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Tokens per piece of logits compared at once (two [piece, vocab] fp32 tensors and their softmaxes).
constexpr int64_t kLogitBytesPerPiece = 128ll << 20;

json finite_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

std::string fixed(double v, fmt::format_string<double> f = "{:.4g}") {
  if (!std::isfinite(v)) return "n/a";
  return fmt::vformat(f, fmt::make_format_args(v));
}

// Encoders: how close the student's hidden states are to the teacher's, as a sentence encoder is
// judged (the cosine similarity of mean-pooled embeddings) and per token.
json evaluate_hidden(const Model& teacher, const Model& student, const DataSource& data, int64_t first, int64_t count,
                     const at::Device& device, const std::vector<int64_t>& student_channels) {
  double cos_sum = 0, cos_min = 1, kept_sum = 0, token_cos = 0, rel = 0, tokens = 0;
  const at::Tensor channels =
      student_channels.empty() ? at::Tensor() : at::tensor(student_channels, at::kLong).to(device);
  std::vector<at::Tensor> t_pooled, s_pooled;
  for (int64_t i = first; i < first + count; ++i) {
    const Batch b = to_device(data.read(i, 1), device);
    const at::Tensor t = teacher.head(teacher.features(b)).to(at::kFloat);
    const at::Tensor narrow = student.head(student.features(b)).to(at::kFloat);
    if (narrow.size(-1) != (channels.defined() ? channels.size(0) : t.size(-1)))
      throw UsageError(
          "the student's hidden states are " + std::to_string(narrow.size(-1)) + " wide, the teacher's " +
          std::to_string(t.size(-1)) +
          (channels.defined() ? " and the plan keeps " + std::to_string(channels.size(0)) : "") +
          ": an encoder is compared in the teacher's coordinates, which a narrower student needs its plan for");
    const at::Tensor s = widen_channels(narrow, channels, t.size(-1));
    const at::Tensor m = b.attention_mask.defined() ? b.attention_mask.ne(0).to(at::kFloat)
                                                    : at::ones({t.size(0), t.size(1)}, t.options());
    const at::Tensor tp = mean_pool(t, m), sp = mean_pool(narrow, m);
    const double c = at::cosine_similarity(mean_pool(s, m), tp, -1, 1e-8).item<double>();
    cos_sum += c;
    cos_min = std::min(cos_min, c);
    kept_sum +=
        at::cosine_similarity(sp, channels.defined() ? tp.index_select(-1, channels) : tp, -1, 1e-8).item<double>();
    t_pooled.push_back(tp);
    s_pooled.push_back(sp);
    token_cos += (at::cosine_similarity(s, t, -1, 1e-8) * m).sum().item<double>();
    rel += ((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-12) * m).sum().item<double>();
    tokens += m.sum().item<double>();
  }
  // Pairwise similarities between the samples, teacher against student (pairs i < j).
  double correlation = NAN;
  if (count >= 3) {
    auto similarities = [](const std::vector<at::Tensor>& rows) {
      const at::Tensor e = at::cat(rows).to(at::kDouble);
      const at::Tensor n = e / e.norm(2, -1, true).clamp_min(1e-12);
      const at::Tensor sim = n.matmul(n.t());
      return sim.masked_select(at::ones_like(sim, at::kBool).triu(1));
    };
    const at::Tensor a = similarities(t_pooled), b = similarities(s_pooled);
    const at::Tensor da = a - a.mean(), db = b - b.mean();
    correlation = ((da * db).sum() / (da.norm() * db.norm()).clamp_min(1e-300)).item<double>();
  }
  return {{"samples", count},
          {"tokens", tokens},
          {"cosine", finite_or_null(cos_sum / std::max<int64_t>(1, count))},
          {"min_cosine", finite_or_null(cos_min)},
          {"cosine_kept_channels", finite_or_null(kept_sum / std::max<int64_t>(1, count))},
          {"similarity_correlation", finite_or_null(correlation)},
          {"token_cosine", finite_or_null(token_cos / std::max(1.0, tokens))},
          {"relative_mse", finite_or_null(rel / std::max(1.0, tokens))}};
}

}  // namespace

std::vector<std::string> required_quality_keys(ModelOutput output) {
  if (output == ModelOutput::hidden_states) return {"cosine", "token_cosine", "relative_mse"};
  return {"kl", "top1_agreement"};
}

json evaluate_quality(const Model& teacher, const Model& student, const DataSource& data, int64_t first, int64_t count,
                      const at::Device& device, ModelOutput output, const std::vector<int64_t>& student_channels) {
  at::NoGradGuard no_grad;
  if (output == ModelOutput::hidden_states)
    return evaluate_hidden(teacher, student, data, first, count, device, student_channels);
  double kl = 0, agree = 0, positions = 0, t_nll = 0, s_nll = 0, targets = 0;
  bool lm = true;
  for (int64_t i = first; i < first + count; ++i) {
    const Batch b = to_device(data.read(i, 1), device);
    const at::Tensor tf = teacher.features(b), sf = student.features(b);
    if (tf.dim() == 2) {  // classifier: [1, hidden]
      lm = false;
      const at::Tensor tl = at::log_softmax(teacher.head(tf).to(at::kFloat), -1);
      const at::Tensor sl = at::log_softmax(student.head(sf).to(at::kFloat), -1);
      kl += (tl.exp() * (tl - sl)).sum().item<double>();
      agree += (tl.argmax(-1) == sl.argmax(-1)).sum().item<double>();
      positions += static_cast<double>(tl.size(0));
      continue;
    }
    const int64_t L = tf.size(1);
    const at::Tensor t2 = tf.reshape({L, tf.size(2)}), s2 = sf.reshape({L, sf.size(2)});
    const at::Tensor ids = b.input_ids.reshape({L});
    const at::Tensor valid = b.attention_mask.defined()
                                 ? b.attention_mask.reshape({L}).ne(0)
                                 : at::ones({L}, at::TensorOptions().dtype(at::kBool).device(device));
    const int64_t vocab = teacher.head(t2.slice(0, 0, 1)).size(-1);
    const int64_t piece = std::max<int64_t>(1, kLogitBytesPerPiece / (vocab * 4));
    for (int64_t a = 0; a < L; a += piece) {
      const int64_t e = std::min(L, a + piece);
      const at::Tensor tl = at::log_softmax(teacher.head(t2.slice(0, a, e)).to(at::kFloat), -1);
      const at::Tensor sl = at::log_softmax(student.head(s2.slice(0, a, e)).to(at::kFloat), -1);
      const at::Tensor m = valid.slice(0, a, e).to(at::kDouble);
      kl += ((tl.exp() * (tl - sl)).sum(-1).to(at::kDouble) * m).sum().item<double>();
      agree += ((tl.argmax(-1) == sl.argmax(-1)).to(at::kDouble) * m).sum().item<double>();
      positions += m.sum().item<double>();
      // Next-token NLL: position p predicts token p + 1 (both real tokens).
      const int64_t last = std::min(e, L - 1);
      if (last > a) {
        const at::Tensor next = ids.slice(0, a + 1, last + 1).view({-1, 1});
        const at::Tensor nm = (valid.slice(0, a, last) & valid.slice(0, a + 1, last + 1)).to(at::kDouble);
        t_nll -= (tl.slice(0, 0, last - a).gather(-1, next).view({-1}).to(at::kDouble) * nm).sum().item<double>();
        s_nll -= (sl.slice(0, 0, last - a).gather(-1, next).view({-1}).to(at::kDouble) * nm).sum().item<double>();
        targets += nm.sum().item<double>();
      }
    }
  }
  json out;
  if (lm) {
    const double tn = t_nll / std::max(1.0, targets), sn = s_nll / std::max(1.0, targets);
    out = {{"samples", count},
           {"tokens", targets},
           {"teacher_nll", finite_or_null(tn)},
           {"student_nll", finite_or_null(sn)},
           {"teacher_ppl", finite_or_null(std::exp(tn))},
           {"student_ppl", finite_or_null(std::exp(sn))},
           {"kl", finite_or_null(kl / std::max(1.0, positions))},
           {"top1_agreement", finite_or_null(agree / std::max(1.0, positions))}};
  } else {
    out = {{"samples", count},
           {"kl", finite_or_null(kl / std::max(1.0, positions))},
           {"top1_agreement", finite_or_null(agree / std::max(1.0, positions))}};
  }
  return out;
}

double measure_latency(const Model& model, const Batch& example, int repeats, const at::Device& device) {
  at::NoGradGuard no_grad;
  const Batch b = to_device(example, device);
  auto once = [&] {
    const auto t0 = std::chrono::steady_clock::now();
    const at::Tensor y = model.logits(b);
    synchronize(device);
    (void)y;
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  once();  // warm-up: allocations, kernel selection
  std::vector<double> t;
  for (int r = 0; r < std::max(1, repeats); ++r) t.push_back(once());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// What generate() costs a user of a causal LM, in our runtime: batch 1, the KV cache, greedy; the prefill
// of a kPromptTokens-token prompt and kNewTokens decode steps after it.
constexpr int64_t kPromptTokens = 256, kNewTokens = 64;

struct Generation {
  double prefill_s = 0, decode_s = 0;
};

Generation measure_generation(const Model& model, const at::Tensor& prompt, int repeats, const at::Device& device) {
  at::NoGradGuard no_grad;
  const at::Tensor ids = prompt.to(device);
  auto since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  auto once = [&] {
    Generation g;
    KvCache cache;
    auto t0 = std::chrono::steady_clock::now();
    at::Tensor h = model.decode(ids, cache);
    at::Tensor next = model.head(h.slice(1, h.size(1) - 1)).argmax(-1);
    synchronize(device);
    g.prefill_s = since(t0);
    t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < kNewTokens; ++i) next = model.head(model.decode(next, cache)).argmax(-1);
    synchronize(device);
    g.decode_s = since(t0);
    return g;
  };
  once();  // warm-up
  std::vector<double> prefill, decode;
  for (int r = 0; r < std::clamp(repeats, 1, 3); ++r) {
    const Generation g = once();
    prefill.push_back(g.prefill_s), decode.push_back(g.decode_s);
  }
  std::sort(prefill.begin(), prefill.end());
  std::sort(decode.begin(), decode.end());
  return {prefill[prefill.size() / 2], decode[decode.size() / 2]};
}

// The prompt: the first `tokens` tokens of the samples from `first` on (fewer when the data has fewer).
at::Tensor generation_prompt(const DataSource& data, int64_t first, int64_t tokens) {
  std::vector<at::Tensor> parts;
  int64_t have = 0;
  for (int64_t i = first; i < data.size() && have < tokens; ++i) {
    parts.push_back(data.read(i, 1).input_ids);
    have += parts.back().size(1);
  }
  return at::cat(parts, 1).slice(1, 0, tokens);
}

json generation_speed(const ModelAdapter& adapter, const HfCheckpoint& dense, const HfCheckpoint& exported,
                      const at::Tensor& prompt, at::ScalarType dtype, int repeats, const at::Device& device) {
  const auto teacher = adapter.load(dense, {dtype, device});
  const Generation d = measure_generation(*teacher, prompt, repeats, device);
  const auto student = adapter.load(exported, {dtype, device});
  const Generation e = measure_generation(*student, prompt, repeats, device);
  const double n = static_cast<double>(kNewTokens);
  return {{"prompt_tokens", prompt.size(1)},
          {"new_tokens", kNewTokens},
          {"dtype", c10::toString(dtype)},
          {"dense_prefill_s", d.prefill_s},
          {"export_prefill_s", e.prefill_s},
          {"dense_decode_tokens_per_s", n / d.decode_s},
          {"export_decode_tokens_per_s", n / e.decode_s},
          {"prefill_speedup", d.prefill_s / std::max(e.prefill_s, 1e-12)},
          {"decode_speedup", d.decode_s / std::max(e.decode_s, 1e-12)}};
}

namespace {

// The samples evaluate measures on, and how the log and the card name them.
struct EvalSamples {
  std::unique_ptr<DataSource> data;
  int64_t first = 0, count = 0;
  std::string source;
};

// The samples: evaluate.data, or the run's held-out samples.
EvalSamples open_samples(const Config& c, const LoadedModel& lm) {
  EvalSamples s;
  if (!c.evaluate.data.empty()) {
    DataSpec spec = data_spec(c);
    spec.path = c.evaluate.data;
    spec.samples = 0;
    DataExpectations expect;
    expect.vocab_size = lm.arch.vocab_size;
    expect.image_size = lm.arch.image_size;
    s.data = DataSource::open(spec, expect, read_pixel_normalization(c.model.path));
    s.count = c.evaluate.samples > 0 ? std::min(c.evaluate.samples, s.data->size()) : s.data->size();
    s.source = c.evaluate.data.filename().string();  // a file name: the card travels, local paths do not
  } else {
    s.data = open_data(c, lm.arch);
    s.first = s.data->size() - c.train.holdout;
    s.count = c.train.holdout;
    if (c.evaluate.samples > 0) s.count = std::min(s.count, c.evaluate.samples);
    s.source = c.data.path.filename().string() + " (the last " + std::to_string(c.train.holdout) +
               " samples, never trained on)";
  }
  if (s.count <= 0)
    throw ConfigError(c.source.string() + ": evaluate has no samples: train.holdout = 0 and no evaluate.data");
  return s;
}

// Before evaluate loads anything: whether the dense model and one student in fp32 fit beside the mapped checkpoints
// (rank 0 measures alone while the other ranks wait; drill 6 of issue 37 saw 17 GiB on rank 0 at LLaMA-3.2-1B's
// shape when three models were held at once). A healed run's unhealed student is rebuilt from the calibrated slice
// (the plan's slice in the dense dtype beside the refitted fp32 tensors). The export is complete by now, so the
// message says how to measure it elsewhere.
void check_evaluate_fits(const Config& c, const LoadedModel& lm, const HfCheckpoint& exported, const Plan& plan,
                         bool healed, const at::Device& device) {
  const int64_t full = parameter_count(lm.shape), slim = parameter_count(plan.chosen.shape);
  const auto dense_mapped = static_cast<int64_t>(lm.checkpoint.total_bytes());
  const int64_t dense_elem = dense_mapped / std::max<int64_t>(1, static_cast<int64_t>(lm.checkpoint.total_numel()));
  const int64_t student =
      std::max(slim * 4 + static_cast<int64_t>(exported.total_bytes()), healed ? slim * (8 + dense_elem) : int64_t{0});
  const int64_t logits = 4 * kLogitBytesPerPiece;
  check_fits_host(c, device, "evaluate", full * 4 + dense_mapped + student + logits,
                  fmt::format("the dense model in fp32, {}; its mapped checkpoint, {}; one student at a time, {}; "
                              "pieces of logits, {}",
                              gib(full * 4), gib(dense_mapped), gib(student), gib(logits)),
                  fmt::format("a GPU (run.device) or a node with more memory: the export in {} is complete; "
                              "`hawada-pipeline evaluate` measures it there, or this config reruns there and reuses "
                              "every stage before evaluate",
                              exported.dir().string()),
                  /*ranks=*/1);
}

// The quality of the export against the teacher in fp32 (result["export"]), and on healed runs the unhealed
// student's (result["unhealed"]), one student at a time.
void measure_quality(json& result, const StageContext& ctx, const LoadedModel& lm, const HfCheckpoint& exported,
                     const EvalSamples& s, const at::Device& device) {
  const Plan plan = read_plan(ctx.run_dir, lm.shape);
  const RunLayout layout(ctx.run_dir);
  const bool healed = fs::exists(layout.healed_weights());
  check_evaluate_fits(ctx.config, lm, exported, plan, healed, device);
  const auto teacher = lm.adapter->load(lm.checkpoint, {at::kFloat, device});
  {
    const auto student = lm.adapter->load(exported, {at::kFloat, device});
    result["export"] =
        evaluate_quality(*teacher, *student, *s.data, s.first, s.count, device, lm.shape.traits.output, plan.hidden);
  }
  // Healed runs: the unhealed student (the calibrated slice) once the export's is freed.
  if (healed) {
    const HfCheckpoint unhealed =
        student_checkpoint(lm, plan, Scales::read(layout.scales(), plan), layout.reconstructed_weights(),
                           ctx.fingerprints.at(std::string(stage_names::calibrate)));
    const auto model = lm.adapter->load(unhealed, {at::kFloat, device});
    result["unhealed"] =
        evaluate_quality(*teacher, *model, *s.data, s.first, s.count, device, lm.shape.traits.output, plan.hidden);
  }
}

// The batch latency is measured on: the first sample repeated to the budget's batch, its tokens padded to
// the sequence length.
Batch latency_example(const Config& c, const DataSource& data, int64_t first) {
  Batch example;
  const Batch one = data.read(first, 1);
  const int64_t B = c.budget.latency_batch;
  if (one.input_ids.defined()) {
    example.input_ids = one.input_ids.repeat({B, 1});
    if (c.data.seq_len > example.input_ids.size(1))
      example.input_ids = at::cat(
          {example.input_ids, example.input_ids.slice(1, 0, 1).expand({B, c.data.seq_len - example.input_ids.size(1)})},
          1);
  }
  if (one.pixel_values.defined()) example.pixel_values = one.pixel_values.repeat({B, 1, 1, 1});
  return example;
}

// Latency of dense and export in the compute dtype on `example`, beside the cost model's prediction.
json measure_latencies(const StageContext& ctx, const LoadedModel& lm, const HfCheckpoint& exported,
                       const Batch& example, const at::Device& device) {
  const Config& c = ctx.config;
  const int repeats = static_cast<int>(c.evaluate.latency_repeats);
  const auto teacher = lm.adapter->load(lm.checkpoint, {compute_dtype(c), device});
  const double dense_s = measure_latency(*teacher, example, repeats, device);
  const auto student = lm.adapter->load(exported, {compute_dtype(c), device});
  const double slim_s = measure_latency(*student, example, repeats, device);
  const Plan plan = read_plan(ctx.run_dir, lm.shape);
  return {{"batch", c.budget.latency_batch},
          {"tokens", example.input_ids.defined() ? example.input_ids.size(1) : 0},
          {"dtype", c10::toString(compute_dtype(c))},
          {"repeats", repeats},
          {"dense_s", dense_s},
          {"export_s", slim_s},
          {"measured_speedup", dense_s / std::max(slim_s, 1e-12)},
          {"predicted_speedup", plan.dense.latency_s / std::max(plan.chosen.latency_s, 1e-12)}};
}

// Causal LMs: what generate() costs, batch 1 with the KV cache (the same in transformers: bench/depth.sh).
// A sliding-window model decodes within its window only (our runtime does not slide), one with a position
// limit within it: a shorter prompt.
void measure_generation_speed(json& result, const Config& c, const LoadedModel& lm, const HfCheckpoint& exported,
                              const EvalSamples& s, const at::Device& device) {
  int64_t prompt_tokens = kPromptTokens;
  for (int64_t limit : {lm.arch.sliding_window, lm.arch.max_positions})
    if (limit > 0) prompt_tokens = std::min(prompt_tokens, limit - kNewTokens);
  if (lm.shape.traits.output == ModelOutput::token_logits && lm.shape.traits.causal && prompt_tokens > 0)
    result["generation"] =
        generation_speed(*lm.adapter, lm.checkpoint, exported, generation_prompt(*s.data, s.first, prompt_tokens),
                         compute_dtype(c), static_cast<int>(c.evaluate.latency_repeats), device);
}

// evaluate/evaluate.json, the "evaluate" key of export/summary.json, and the model card.
void write_evaluation(const StageContext& ctx, const LoadedModel& lm, const fs::path& final_dir, const json& result) {
  const RunLayout layout(ctx.run_dir);
  fs::create_directories(layout.evaluate());
  atomic_write_text(layout.evaluation(), result.dump(2) + "\n");
  json summary = read_json_file(layout.export_summary());
  summary["evaluate"] = result;
  atomic_write_text(layout.export_summary(), summary.dump(2) + "\n");
  atomic_write_text(final_dir / "README.md", model_card(ctx.config, lm, summary, ctx.run_dir));
}

// The log line's quality part: perplexity or embedding similarity, or KL and top-1 agreement (and the
// unhealed student's beside the export's).
std::string quality_phrase(const json& result) {
  const json& q = result["export"];
  std::string line;
  if (q.contains("student_ppl"))
    line += "perplexity teacher " + fixed(q.value("teacher_ppl", NAN)) + ", export " +
            fixed(q.value("student_ppl", NAN)) + "; ";
  if (q.contains("cosine"))
    line += "embedding cosine to the teacher " + fixed(q.value("cosine", NAN), "{:.4f}") + " (min " +
            fixed(q.value("min_cosine", NAN), "{:.4f}") + "; on the kept channels " +
            fixed(q.value("cosine_kept_channels", NAN), "{:.4f}") + "), pairwise-similarity correlation " +
            fixed(q.value("similarity_correlation", NAN), "{:.4f}") + ", token cosine " +
            fixed(q.value("token_cosine", NAN), "{:.4f}");
  else
    line += "KL " + fixed(q.value("kl", NAN)) + ", top-1 agreement " + fixed(q.value("top1_agreement", NAN), "{:.3f}");
  if (result.contains("unhealed") && result["unhealed"].contains("cosine"))
    line += " (unhealed: cosine " + fixed(result["unhealed"].value("cosine", NAN), "{:.4f}") + ")";
  if (result.contains("unhealed") && result["unhealed"].contains("student_ppl"))
    line += " (unhealed: perplexity " + fixed(result["unhealed"].value("student_ppl", NAN)) + ")";
  return line;
}

// The log line's speed part: the forward latency of dense and export, and generation where measured.
std::string speed_phrase(const json& result) {
  if (!result.contains("latency")) return llama_cpp_phrase(result);
  std::string line = "; latency dense " + fixed(result["latency"]["dense_s"].get<double>() * 1e3) + " ms, export " +
                     fixed(result["latency"]["export_s"].get<double>() * 1e3) + " ms (speedup " +
                     fixed(result["latency"]["measured_speedup"].get<double>(), "{:.2f}") + "x measured, " +
                     fixed(result["latency"]["predicted_speedup"].get<double>(), "{:.2f}") + "x predicted)";
  if (result.contains("generation")) {
    const json& g = result["generation"];
    line += "; generate (batch 1, KV cache): prefill of " + std::to_string(g["prompt_tokens"].get<int64_t>()) +
            " tokens " + fixed(g["prefill_speedup"].get<double>(), "{:.2f}") + "x, decode " +
            fixed(g["export_decode_tokens_per_s"].get<double>(), "{:.1f}") + " tokens/s against " +
            fixed(g["dense_decode_tokens_per_s"].get<double>(), "{:.1f}") + " (" +
            fixed(g["decode_speedup"].get<double>(), "{:.2f}") + "x)";
  }
  return line + llama_cpp_phrase(result);
}

}  // namespace

std::string EvaluateStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  Hasher h;
  h.update("evaluate/2");
  h.update(ctx.fingerprints.at(std::string(stage_names::export_)));
  h.update(c.evaluate.data.string());
  if (!c.evaluate.data.empty()) h.update_u64(fs::file_size(c.evaluate.data));
  for (int64_t v : {c.evaluate.samples, static_cast<int64_t>(c.evaluate.latency_repeats), c.budget.latency_batch})
    h.update_u64(static_cast<uint64_t>(v));
  if (c.evaluate.runtimes != std::vector<EvalRuntime>{EvalRuntime::libtorch}) {  // the default keeps old markers
    h.update("runtimes");
    for (const EvalRuntime r : c.evaluate.runtimes) h.update_u64(static_cast<uint64_t>(r));
    h.update_u64(static_cast<uint64_t>(c.evaluate.threads));
  }
  return hex64(h.digest());
}

void EvaluateStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  if (process_info().rank != 0) {
    world::barrier();
    return;
  }
  const at::Device device = run_device(c);
  const LoadedModel lm = load_model(c, /*weights=*/false);
  const fs::path final_dir = RunLayout(ctx.run_dir).exported_model(c.export_.name);
  const HfCheckpoint exported = with_context("evaluate: ", [&] { return HfCheckpoint::open(final_dir); });
  const EvalSamples samples = open_samples(c, lm);

  const auto t0 = std::chrono::steady_clock::now();
  json result{{"data", samples.source},
              {"first_sample", samples.first},
              {"compute_dtype", "float32"},
              {"device", describe_device(device)}};
  measure_quality(result, ctx, lm, exported, samples, device);
  for (const std::string& key : required_quality_keys(lm.shape.traits.output))
    if (result["export"][key].is_null())
      throw NumericError("evaluate: the export's " + key + " on " + samples.source +
                         " is not finite: the exported model produces non-finite outputs");
  if (c.evaluate.has(EvalRuntime::libtorch)) {
    // Latency of dense and export in the compute dtype, at the budget's batch and sequence length.
    result["latency"] = measure_latencies(ctx, lm, exported, latency_example(c, *samples.data, samples.first), device);
    measure_generation_speed(result, c, lm, exported, samples, device);
  }
  if (c.evaluate.has(EvalRuntime::llama_cpp))
    result["llama_cpp"] = measure_llama_cpp(ctx, lm, exported, *samples.data, samples.first, samples.count, device);
  result["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  write_evaluation(ctx, lm, final_dir, result);
  log::info("evaluate: " + std::to_string(samples.count) + " samples of " + samples.source + ": " +
            quality_phrase(result) + speed_phrase(result));
  world::barrier();
}

}  // namespace hawada
