// What every adapter's prune_weights shares: per layer, the kept query channels and FFN channels of a
// plan, and the gate values folded into the output-side weights (head and FFN gates into the output
// projections' kept columns, the calibrated output scales into their kept rows and biases).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "adapters/model.h"
#include "core/format/plan.h"

namespace hawada {

/// One layer of a plan, ready for slice_linear / slice_vector (core/prune/slicing.h).
struct LayerFolds {
  std::vector<int64_t> q;    ///< kept query channels: each kept head's head_dim channels
  std::vector<int64_t> ffn;  ///< kept FFN channels
  at::Tensor head_scale;     ///< per kept query channel: its head's gate (undefined: none)
  at::Tensor ffn_scale;      ///< per kept FFN channel: its gate (undefined: none)
  at::Tensor attn_rows;      ///< per kept hidden channel: the attention output's scale (undefined: none)
  at::Tensor mlp_rows;       ///< per kept hidden channel: the MLP output's scale (undefined: none)
};
LayerFolds layer_folds(const Plan& plan, const GateValues& folds, int64_t layer);

}  // namespace hawada
