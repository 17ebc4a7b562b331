#include "stages/rounding_search.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/fs.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/mpi_session.h"
#include "core/process.h"
#include "core/shape_search.h"
#include "stages/student.h"

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

}  // namespace

std::string RoundingSearchStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  Hasher h;
  h.update("rounding_search/1");
  h.update(ctx.fingerprints.at("reduce_gates"));
  for (int64_t v : {static_cast<int64_t>(c.search.ffn_multiple), static_cast<int64_t>(c.search.hidden_multiple),
                    static_cast<int64_t>(c.search.prune_kv_groups), static_cast<int64_t>(c.budget.metric),
                    c.budget.latency_batch, c.data.seq_len})
    h.update_u64(static_cast<uint64_t>(v));
  for (double v : {c.budget.target, c.budget.device_flops, c.budget.device_bandwidth}) h.update(&v, sizeof v);
  if (!c.search.latency_table.empty()) h.update(read_text_file(c.search.latency_table));
  return hex64(h.digest());
}

void RoundingSearchStage::run(const StageContext& ctx) {
  const Config& c = ctx.config;
  if (process_info().rank == 0) {
    const LoadedModel lm = load_model(c, /*weights=*/false);
    const GatesConfig gates = effective_gates(c, lm.arch);
    const safetensors::Reader file(gate_scores_file(ctx.run_dir));
    StructureScores scores;
    if (gates.heads) scores.heads = rows_of(file.tensor("heads.score"));
    if (gates.ffn) scores.ffn = rows_of(file.tensor("ffn.score"));
    if (gates.hidden && lm.shape.family == ModelShape::Family::llama) scores.hidden = to_vector(file.tensor("hidden.score"));
    if (gates.hidden && lm.shape.family == ModelShape::Family::vit) scores.hidden = to_vector(file.tensor("hidden.score"));
    SearchRules rules;
    rules.ffn_multiple = c.search.ffn_multiple;
    rules.hidden_multiple = c.search.hidden_multiple;
    rules.prune_kv_groups = c.search.prune_kv_groups;
    rules.heads = gates.heads;
    rules.ffn = gates.ffn;
    rules.hidden = gates.hidden;
    CostSpec cost;
    cost.metric = c.budget.metric == BudgetMetric::params ? CostSpec::Metric::params : CostSpec::Metric::latency;
    cost.target = c.budget.target;
    cost.batch = c.budget.latency_batch;
    cost.tokens = lm.shape.family == ModelShape::Family::vit
                      ? (lm.shape.image_size / lm.shape.patch_size) * (lm.shape.image_size / lm.shape.patch_size) + 1
                      : c.data.seq_len;
    cost.rates = {c.budget.device_flops, c.budget.device_bandwidth};
    LatencyTable table;
    if (!c.search.latency_table.empty()) {
      const std::string file = c.search.latency_table.string();
      table = latency_table_from_json(read_json_file(c.search.latency_table), file);
      if (table.batch != cost.batch || table.tokens != cost.tokens)
        throw ConfigError(c.source.string() + ": search.latency_table '" + file + "' was measured at batch " +
                          std::to_string(table.batch) + " x " + std::to_string(table.tokens) +
                          " tokens; budget.latency_batch and the sequence length ask for " + std::to_string(cost.batch) +
                          " x " + std::to_string(cost.tokens) + " (profile with --batch and --tokens to match)");
      cost.table = &table;
      log::info("rounding_search: latencies from " + file + " (" + table.device + ", " + table.dtype + ")");
    }

    const auto t0 = std::chrono::steady_clock::now();
    const SearchResult r = search_shape(lm.shape, scores, rules, cost);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const fs::path dir = ctx.run_dir / "plan";
    fs::create_directories(dir);
    nlohmann::json j = plan_to_json(r.plan);
    j["legal_shapes"] = r.legal;
    j["search_seconds"] = seconds;
    atomic_write_text(dir / "plan.json", j.dump(1) + "\n");
    std::ostringstream csv;
    csv << "hidden_size,num_attention_heads,num_key_value_heads,intermediate_size,parameters,flops,latency_s,"
           "cost_ratio,importance,chosen\n";
    for (const Candidate& k : r.pareto) {
      char line[512];
      const ModelShape& s = k.shape;
      std::snprintf(line, sizeof line, "%lld,%lld,%lld,%lld,%.0f,%.6g,%.6g,%.6f,%.6f,%d\n",
                    static_cast<long long>(s.hidden), static_cast<long long>(s.heads),
                    static_cast<long long>(s.kv_heads), static_cast<long long>(s.ffn), k.parameters, k.flops,
                    k.latency_s, k.cost_ratio, k.importance,
                    s.hidden == r.plan.chosen.shape.hidden && s.heads == r.plan.chosen.shape.heads &&
                            s.kv_heads == r.plan.chosen.shape.kv_heads && s.ffn == r.plan.chosen.shape.ffn
                        ? 1
                        : 0);
      csv << line;
    }
    atomic_write_text(dir / "candidates.csv", csv.str());
    const ModelShape& s = r.plan.chosen.shape;
    char line[512];
    std::snprintf(line, sizeof line,
                  "rounding_search: hidden %lld, heads %lld (kv %lld), ffn %lld: %.4f of the dense %s (target %.4f), "
                  "importance kept %.4f; %zu legal shapes, %zu on the Pareto front, %.3f s",
                  static_cast<long long>(s.hidden), static_cast<long long>(s.heads), static_cast<long long>(s.kv_heads),
                  static_cast<long long>(s.ffn), r.plan.chosen.cost_ratio, r.plan.metric.c_str(), c.budget.target,
                  r.plan.chosen.importance, r.legal, r.pareto.size(), seconds);
    log::info(line);
  }
  world::barrier();
}

}  // namespace hawada
