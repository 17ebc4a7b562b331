// A plan: the shape rounding_search chose and, per layer, which structures it keeps; its plan.json
// form and reader (which checks everything it reads: plan.json is an input a user can edit). No
// LibTorch here (the fuzz target of the reader builds without it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/format/model_shape.h"

namespace hawada {

/// A candidate shape with its predictions.
struct Candidate {
  ModelShape shape;
  double parameters = 0, flops = 0, latency_s = 0;
  double cost_ratio = 0;  ///< under the metric, of the dense model
  double importance = 0;  ///< kept fraction of the scores, averaged over the kinds with gates
};

/// The chosen shape and, per layer, which structures it keeps (sorted indices into the dense model).
struct Plan {
  Candidate chosen;
  Candidate dense;
  std::vector<std::vector<int64_t>> heads;     ///< [dense layers]: kept query heads, grouped by kv head
  std::vector<std::vector<int64_t>> kv_heads;  ///< [layers]: kept kv heads (architectures with kv groups)
  std::vector<std::vector<int64_t>> ffn;       ///< [layers]: kept FFN channels
  std::vector<int64_t> hidden;                 ///< kept hidden channels
  /// Kept blocks (dense layer indices, ascending; chosen.shape.layers of them). heads, kv_heads and ffn
  /// stay indexed by dense layer; a dropped layer's entries are unused.
  std::vector<int64_t> layers;
  std::string metric;
  double target = 0;
};

/// Empty when transformers builds and loads this shape; otherwise why not.
std::string transformers_violation(const ModelShape& shape, const ModelShape& dense);

/// plan.json and its reader (CheckpointError naming the file on a malformed plan).
nlohmann::json plan_to_json(const Plan& plan);
Plan plan_from_json(const nlohmann::json& j, const ModelShape& dense, const std::string& file);

}  // namespace hawada
