// What a budget counts: the one spelling the config reader, training's differentiable term, the rounding
// search, the plans and the logs share.
#pragma once

namespace hawada {

/// What the budget counts (`budget.metric`): every parameter, the parameters outside the embedding tables
/// (`non_embedding_params`), or the modelled latency.
enum class BudgetMetric { params, non_embedding_params, latency };

/// The metric's name in configs, plans and logs.
inline const char* metric_name(BudgetMetric m) {
  switch (m) {
    case BudgetMetric::params:
      return "params";
    case BudgetMetric::non_embedding_params:
      return "non_embedding_params";
    case BudgetMetric::latency:
      return "latency";
  }
  return "params";
}

}  // namespace hawada
