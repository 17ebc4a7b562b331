// What a transformer shape costs: parameters, forward FLOPs and bytes, and a roofline latency on a
// target device (default: H100 SXM, dense bf16 989 TFLOP/s, 3.35 TB/s). Every layer has the same
// shape (DESIGN.md: transformers builds every layer from the global config). Used by the budget
// (expected cost of the gates) and by the rounding search.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "core/format/model_shape.h"

namespace hawada {

/// Which parameters a count covers: all of them (transformers' num_parameters()), or all but the
/// embedding tables (ShapeTraits::embedding_h1): the "non-embedding parameters" Kaplan et al. and
/// Minitron report, which a large vocabulary does not dominate.
enum class ParameterScope { all, non_embedding };

/// Parameters of the Hugging Face model of this shape (tied embeddings counted once), as
/// transformers' num_parameters() counts them (or without the embedding tables).
int64_t parameter_count(const ModelShape& shape, ParameterScope scope = ParameterScope::all);

/// Work of one forward pass over `batch` sequences of `tokens` tokens (an architecture may fix tokens, e.g. patches +
/// 1).
struct ForwardCost {
  double flops = 0;  ///< 2 per multiply-add, matrix products and attention
  double bytes = 0;  ///< weights read once plus activations read and written by the matrix products
};
ForwardCost forward_cost(const ModelShape& shape, int64_t batch, int64_t tokens, int64_t bytes_per_element = 2);

/// A device's peak rates.
struct DeviceRates {
  double flops_per_s = 989e12;   ///< H100 SXM dense bf16
  double bytes_per_s = 3.35e12;  ///< H100 SXM HBM3
  /// Fixed seconds each block costs per forward pass whatever its width (kernel launches, dispatch,
  /// synchronisation): what a decode step at batch 1 pays per layer rather than per channel.
  double layer_overhead_s = 0;
};

/// Roofline latency: each matrix product takes max(flops / peak, bytes / bandwidth); summed; plus the
/// per-layer overhead. `tokens` new tokens per sequence attend to `context` keys each (0: to the
/// `tokens` themselves, a prefill; a decode step is tokens = 1 with the KV cache's length as context).
double latency_seconds(const ModelShape& shape, int64_t batch, int64_t tokens, const DeviceRates& rates = {},
                       int64_t bytes_per_element = 2, int64_t context = 0);

/// Structure counts that may differ by layer, as training's expectations: heads [layers] (query
/// heads; kv heads stay), ffn [layers], hidden [] (shared by every layer), layers [layers] (whether
/// each block is kept: its whole cost is weighted by it). Real-valued and differentiable; an undefined
/// tensor means the dense count.
struct GateCounts {
  at::Tensor heads, ffn, hidden, layers;
};
/// Parameters (as parameter_count) of a model with these counts, as a 0-dim fp64 tensor. The same
/// formulas as parameter_count: at integer uniform counts the two agree exactly.
at::Tensor expected_parameters(const ModelShape& shape, const GateCounts& counts,
                               ParameterScope scope = ParameterScope::all);
/// Roofline latency (as latency_seconds) of a model with these counts, as a 0-dim fp64 tensor.
at::Tensor expected_latency(const ModelShape& shape, const GateCounts& counts, int64_t batch, int64_t tokens,
                            const DeviceRates& rates = {}, int64_t bytes_per_element = 2, int64_t context = 0);

}  // namespace hawada
