#include "stages/rounding_search.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/dist/mpi_session.h"
#include "core/io/checkpoint.h"
#include "core/prune/shape_search.h"
#include "stages/calibrate.h"
#include "training/student.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;

std::vector<double> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

std::vector<std::vector<double>> rows_of(const at::Tensor& t) {
  std::vector<std::vector<double>> out;
  for (int64_t i = 0; i < t.size(0); ++i) out.push_back(to_vector(t[i]));
  return out;
}

// The global gate scores of the kinds with gates.
StructureScores read_scores(const fs::path& run_dir, const GatesConfig& gates) {
  const safetensors::Reader file(RunLayout(run_dir).gate_scores());
  StructureScores scores;
  if (gates.heads) scores.heads = rows_of(file.tensor("heads.score"));
  if (gates.ffn) scores.ffn = rows_of(file.tensor("ffn.score"));
  if (gates.hidden) scores.hidden = to_vector(file.tensor("hidden.score"));
  if (gates.layers) scores.layers = to_vector(file.tensor("layers.score"));
  return scores;
}

// What a legal shape is: the multiples of the widths, whether kv groups go, which kinds are pruned.
SearchRules search_rules(const Config& c, const GatesConfig& gates) {
  SearchRules rules;
  rules.ffn_multiple = c.search.ffn_multiple;
  rules.hidden_multiple = c.search.hidden_multiple;
  rules.prune_kv_groups = c.search.prune_kv_groups;
  rules.heads = gates.heads;
  rules.ffn = gates.ffn;
  rules.hidden = gates.hidden;
  rules.layers = gates.layers;
  return rules;
}

// search.latency_table; a ConfigError when it was measured for another workload than `cost`'s.
LatencyTable read_latency_table(const Config& c, const CostSpec& cost) {
  const std::string file_name = c.search.latency_table.string();
  LatencyTable table = latency_table_from_json(read_json_file(c.search.latency_table), file_name);
  if (table.context != cost.context)
    throw ConfigError(c.source.string() + ": search.latency_table '" + file_name + "' was measured " +
                      (table.context > 0
                           ? "for a decode step against " + std::to_string(table.context) + " cached tokens"
                           : std::string("for a prefill")) +
                      "; budget.latency_mode and budget.decode_context ask for " +
                      (cost.context > 0 ? "a decode step against " + std::to_string(cost.context) + " cached tokens"
                                        : std::string("a prefill")) +
                      " (profile with --decode CONTEXT to match)");
  if (table.batch != cost.batch || table.tokens != cost.tokens)
    throw ConfigError(c.source.string() + ": search.latency_table '" + file_name + "' was measured at batch " +
                      std::to_string(table.batch) + " x " + std::to_string(table.tokens) +
                      " tokens; budget.latency_batch and the sequence length ask for " + std::to_string(cost.batch) +
                      " x " + std::to_string(cost.tokens) + " (profile with --batch and --tokens to match)");
  log::info("rounding_search: latencies from " + file_name + " (" + table.device + ", " + table.dtype + ")");
  return table;
}

// The training samples each probe's KL is measured on (none of the fits sees them first).
std::vector<int64_t> probe_eval_samples(const Config& c, const DistillData& data) {
  SampleOrder eval_order(data.train_samples(), c.run.seed, "probe-eval");
  std::vector<int64_t> eval;
  for (int64_t i = 0; i < std::min(c.search.probe_samples, data.train_samples()); ++i) eval.push_back(eval_order.at(i));
  return eval;
}

// How a probe fits its scales: search.probe_steps calibration steps, in its own sample order.
FitOptions probe_fit_options(const Config& c) {
  FitOptions o;
  o.steps = c.search.probe_steps;
  o.lr = c.calibrate.lr;
  o.warmup = std::min<int64_t>(2, o.steps);
  o.micro_batch = c.train.micro_batch;
  o.grad_accum = c.train.grad_accum;
  o.output_scales = c.calibrate.output_scales;
  o.order_tag = "probe";
  o.stage = "rounding_search";
  return o;
}

// The log line of probe `i` of `n_probe`.
std::string probe_line(const Config& c, const Candidate& cand, int64_t i, int64_t n_probe, double kl, int64_t steps,
                       double seconds) {
  const ModelShape& s = cand.shape;
  return fmt::format(
      "rounding_search: probe {}/{}: layers {}, hidden {}, heads {} (kv {}), ffn {}: {:.4f} of the dense {}, "
      "importance "
      "{:.4f}, KL {:.4f} after {} calibration steps ({:.1f} s)",
      i + 1, n_probe, s.layers, s.hidden, s.heads, s.kv_heads, s.ffn, cand.cost_ratio, metric_name(c.budget.metric),
      cand.importance, kl, steps, seconds);
}

// Probes: the kept importance does not tell which trade-off (fewer heads or a narrower FFN) keeps
// the model best, so the widest shapes of the few best head/hidden counts are each calibrated for a
// few steps and measured (KL to the teacher on training samples none of the fits saw first); the
// lowest KL wins. Collective; replaces r.plan with the winner's and returns the probes for plan.json.
nlohmann::json probe_shapes(const Config& c, const LoadedModel& lm, const StructureScores& scores, const CostSpec& cost,
                            const fs::path& cache_dir, SearchResult& r) {
  nlohmann::json probes = nlohmann::json::array();
  const int64_t n_probe = std::min<int64_t>(c.search.probe_shapes, static_cast<int64_t>(r.widest.size()));
  if (n_probe <= 1) return probes;
  const at::Device device = run_device(c);
  auto comm = run_communicator(c, device);
  const int64_t mb = c.train.micro_batch, accum = c.train.grad_accum;
  const DistillData data(c, lm.arch, cache_dir, mb * accum * process_info().size, "the search probes");
  const std::vector<int64_t> eval = probe_eval_samples(c, data);
  double best = std::numeric_limits<double>::infinity();
  Candidate chosen = r.plan.chosen;
  for (int64_t i = 0; i < n_probe; ++i) {
    const Candidate& cand = r.widest[static_cast<size_t>(i)];
    const Plan plan = plan_for(lm.shape, scores, cand, cost, r.plan.dense);
    const FitOptions o = probe_fit_options(c);
    const auto p0 = std::chrono::steady_clock::now();
    const Scales sc = fit_scales(c, lm, plan, data, o, device, *comm);
    const double kl = student_kl(c, lm, plan, sc, data, eval, device, *comm);
    const double probe_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - p0).count();
    log::info(probe_line(c, cand, i, n_probe, kl, o.steps, probe_s));
    const ModelShape& s = cand.shape;
    probes.push_back({{"num_hidden_layers", s.layers},
                      {"hidden_size", s.hidden},
                      {"num_attention_heads", s.heads},
                      {"num_key_value_heads", s.kv_heads},
                      {"intermediate_size", s.ffn},
                      {"cost_ratio", cand.cost_ratio},
                      {"importance", cand.importance},
                      {"kl", std::isfinite(kl) ? nlohmann::json(kl) : nlohmann::json(nullptr)},
                      {"seconds", probe_s}});
    if (kl < best) best = kl, chosen = cand;
  }
  if (!std::isfinite(best))
    throw NumericError("rounding_search: every probe's KL is non-finite (a broken teacher cache or model?)");
  r.plan = plan_for(lm.shape, scores, chosen, cost, r.plan.dense);
  return probes;
}

// Whether two candidates have the same shape.
bool same_shape(const ModelShape& a, const ModelShape& b) {
  return a.layers == b.layers && a.hidden == b.hidden && a.heads == b.heads && a.kv_heads == b.kv_heads &&
         a.ffn == b.ffn;
}

// plan/candidates.csv: one line per shape, the chosen one marked.
std::string candidates_csv(const SearchResult& r) {
  std::ostringstream csv;
  csv << "num_hidden_layers,hidden_size,num_attention_heads,num_key_value_heads,intermediate_size,parameters,flops,"
         "latency_s,"
         "cost_ratio,importance,chosen\n";
  // The Pareto front, and the chosen shape where a probe picked one off it.
  std::vector<Candidate> rows = r.pareto;
  if (std::none_of(rows.begin(), rows.end(),
                   [&](const Candidate& k) { return same_shape(k.shape, r.plan.chosen.shape); })) {
    rows.push_back(r.plan.chosen);
    std::stable_sort(rows.begin(), rows.end(),
                     [](const Candidate& a, const Candidate& b) { return a.cost_ratio < b.cost_ratio; });
  }
  for (const Candidate& k : rows) {
    const ModelShape& s = k.shape;
    csv << fmt::format("{},{},{},{},{},{:.0f},{:.6g},{:.6g},{:.6f},{:.6f},{}\n", s.layers, s.hidden, s.heads,
                       s.kv_heads, s.ffn, k.parameters, k.flops, k.latency_s, k.cost_ratio, k.importance,
                       same_shape(s, r.plan.chosen.shape) ? 1 : 0);
  }
  return csv.str();
}

// plan/plan.json (with the search's legal shape count, its seconds and the probes) and plan/candidates.csv.
void write_plan(const fs::path& run_dir, const SearchResult& r, double seconds, const nlohmann::json& probes) {
  const RunLayout layout(run_dir);
  const fs::path dir = layout.plan_dir();
  fs::create_directories(dir);
  nlohmann::json j = plan_to_json(r.plan);
  j["legal_shapes"] = r.legal;
  j["search_seconds"] = seconds;
  j["probes"] = probes;
  j["xxh64"] = plan_checksum(r.plan);
  atomic_write_text(layout.plan(), j.dump(1) + "\n");
  atomic_write_text(layout.candidates(), candidates_csv(r));
}

}  // namespace

std::string RoundingSearchStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  Hasher h;
  h.update("rounding_search/4");
  h.update(ctx.fingerprints.at(std::string(stage_names::reduce_gates)));
  h.update(ctx.section("budget"));  // every budget key, listed by the config reader alone
  for (int64_t v :
       {static_cast<int64_t>(c.search.ffn_multiple), static_cast<int64_t>(c.search.hidden_multiple),
        static_cast<int64_t>(c.search.prune_kv_groups), c.data.seq_len, static_cast<int64_t>(c.search.probe_shapes)})
    h.update_u64(static_cast<uint64_t>(v));
  if (!c.search.latency_table.empty()) h.update(read_text_file(c.search.latency_table));
  if (c.search.probe_shapes > 0) {
    // The probes fit scales on the teacher cache: its samples and the fit's settings count.
    h.update(run_cache_dir(c, ctx.fingerprints).filename().string());
    for (int64_t v : {c.search.probe_steps, c.search.probe_samples, static_cast<int64_t>(c.train.micro_batch),
                      static_cast<int64_t>(c.train.grad_accum) * process_info().size, c.run.seed, c.train.holdout,
                      static_cast<int64_t>(c.calibrate.output_scales)})
      h.update_u64(static_cast<uint64_t>(v));
    for (double v : {c.calibrate.lr, c.train.kd_temperature, c.train.mse_weight}) h.update(&v, sizeof v);
    h.update(precision_key(c));
  }
  cache_dir_ = run_cache_dir(c, ctx.fingerprints);
  return hex64(h.digest());
}

void RoundingSearchStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  // Every rank runs the search (it is deterministic); the probes are collective; rank 0 writes.
  const LoadedModel lm = load_model(c, /*weights=*/false);
  const GatesConfig gates = effective_gates(c, lm.shape);
  const StructureScores scores = read_scores(ctx.run_dir, gates);
  const SearchRules rules = search_rules(c, gates);
  CostSpec cost = budget_spec(c, lm.shape);
  LatencyTable table;
  if (!c.search.latency_table.empty()) {
    table = read_latency_table(c, cost);
    cost.table = &table;
  }

  const auto t0 = std::chrono::steady_clock::now();
  SearchResult r = search_shape(lm.shape, scores, rules, cost);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const nlohmann::json probes = probe_shapes(c, lm, scores, cost, cache_dir_, r);

  if (process_info().rank == 0) write_plan(ctx.run_dir, r, seconds, probes);
  const ModelShape& s = r.plan.chosen.shape;
  log::info(fmt::format(
      "rounding_search: layers {}, hidden {}, heads {} (kv {}), ffn {}: {:.4f} of the dense {} (target {:.4f}), "
      "importance kept {:.4f}; {} legal shapes, {} on the Pareto front, {:.3f} s",
      s.layers, s.hidden, s.heads, s.kv_heads, s.ffn, r.plan.chosen.cost_ratio, r.plan.metric, c.budget.target,
      r.plan.chosen.importance, r.legal, r.pareto.size(), seconds));
  world::barrier();
}

}  // namespace hawada
