// The rounding search: from per-structure scores to one uniform shape that transformers can load,
// that kernels like (widths in multiples), and that fits the budget, keeping the most importance.
//
// Legal shapes (DESIGN.md "Hugging Face rules"):
//   kv groups (traits.kv_groups): head_dim kept; heads = kv x (query heads per kv group), the same
//          count in every kept group; kv groups kept unless prune_kv_groups (or of one head each).
//   coupled (traits.hidden_is_heads): hidden = heads x head_size (head size kept).
//   hidden % heads == 0 where transformers validates it (traits.hidden_multiple_of_heads).
//   layers (traits.drop_layers and a layer gate): any count from 1 to the dense model's, the blocks kept by score.
//   All:   every layer the same counts; FFN width a multiple of ffn_multiple (or the dense width), hidden a multiple of
//          hidden_multiple (or the dense width); counts >= 1; a kind without gates keeps its width.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/format/plan.h"
#include "core/prune/budget_metric.h"
#include "core/prune/cost_model.h"

namespace hawada {

/// Global scores per structure (higher = more worth keeping); an empty kind has no gates.
struct StructureScores {
  std::vector<std::vector<double>> heads;  ///< [layers][query heads]
  std::vector<std::vector<double>> ffn;    ///< [layers][intermediate]
  std::vector<double> hidden;              ///< [hidden]
  std::vector<double> layers;              ///< [layers]: whole blocks
};

/// What may shrink and in which steps.
struct SearchRules {
  int64_t ffn_multiple = 256;
  int64_t hidden_multiple = 128;
  bool prune_kv_groups = false;
  bool heads = true, ffn = true, hidden = false, layers = false;  ///< kinds with gates
};

/// Measured block latencies (hawada-pipeline profile): seconds of one attention block at (hidden,
/// query heads, kv heads), one MLP block at (hidden, ffn) and the model's other work (LM head or patch
/// embedding) at hidden, for `batch` sequences of `tokens` tokens on the device that measured them.
struct LatencyTable {
  std::string device, dtype, file;
  int64_t batch = 0, tokens = 0;
  int64_t context = 0;  ///< > 0: a decode step (tokens = 1) against a KV cache of this many tokens
  std::map<std::tuple<int64_t, int64_t, int64_t>, double> attention;
  std::map<std::pair<int64_t, int64_t>, double> mlp;
  std::map<int64_t, double> other;
  /// Latency of a uniform shape: layers x (attention + MLP) + other. ConfigError naming the file and
  /// the missing width when the table was measured for other widths.
  double latency(const ModelShape& shape) const;
};
nlohmann::json latency_table_to_json(const LatencyTable& table);
/// CheckpointError naming the file on a malformed table.
LatencyTable latency_table_from_json(const nlohmann::json& j, const std::string& file);

/// What a shape costs and what it may cost.
struct CostSpec {
  BudgetMetric metric = BudgetMetric::params;
  double target = 0.5;  ///< ratio of the dense model's cost
  int64_t batch = 1, tokens = 512;
  int64_t context = 0;  ///< keys each token attends to (0: tokens; a decode step: tokens = 1, context = the KV cache)
  DeviceRates rates;
  const LatencyTable* table = nullptr;  ///< measured latencies instead of the roofline model
};

/// Every legal shape under the rules, dense included.
std::vector<ModelShape> legal_shapes(const ModelShape& dense, const SearchRules& rules);
/// The search result: the plan and the Pareto front (cost against importance) of the legal shapes.
struct SearchResult {
  Plan plan;
  std::vector<Candidate> pareto;  ///< ascending cost, strictly increasing importance
  /// Within the budget, the widest shape (most kept importance) at each (layers, hidden, heads, kv heads):
  /// the qualitatively different trade-offs, by descending kept importance, except that the best shape of
  /// each layer count comes before any second best (probes then compare depth with width).
  std::vector<Candidate> widest;
  size_t legal = 0;
};
/// ConfigError naming budget.target and the smallest reachable cost when no legal shape fits.
SearchResult search_shape(const ModelShape& dense, const StructureScores& scores, const SearchRules& rules,
                          const CostSpec& cost);

/// The plan of one candidate shape: which structures each layer keeps, by the scores.
Plan plan_for(const ModelShape& dense, const StructureScores& scores, const Candidate& shape, const CostSpec& cost,
              const Candidate& dense_candidate);

}  // namespace hawada
