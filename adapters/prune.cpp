#include "adapters/prune.h"

#include <ATen/ATen.h>

#include "core/prune/slicing.h"

namespace hawada {

LayerFolds layer_folds(const Plan& plan, const GateValues& folds, int64_t layer) {
  const auto l = static_cast<size_t>(layer);
  const int64_t hd = plan.dense.shape.head_dim;
  LayerFolds out;
  out.q = expand_indices(plan.heads[l], hd);
  out.ffn = plan.ffn[l];
  if (folds.heads.defined())
    out.head_scale = folds.heads[layer].index_select(0, index_tensor(plan.heads[l])).repeat_interleave(hd);
  if (folds.ffn.defined()) out.ffn_scale = folds.ffn[layer].index_select(0, index_tensor(out.ffn));
  if (folds.attn_out.defined()) out.attn_rows = folds.attn_out[layer].index_select(0, index_tensor(plan.hidden));
  if (folds.mlp_out.defined()) out.mlp_rows = folds.mlp_out[layer].index_select(0, index_tensor(plan.hidden));
  return out;
}

}  // namespace hawada
