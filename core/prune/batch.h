// The inputs of one forward pass, as every model and stage passes them (read by core/data, consumed
// by the adapters' models): torch tensors, no file format.
#pragma once

#include <ATen/core/Tensor.h>

namespace hawada {

/// Inputs of one forward pass: token ids (+ optional padding mask) for LMs, pixels for vision.
struct Batch {
  at::Tensor input_ids;       ///< int64 [B, L]
  at::Tensor attention_mask;  ///< optional, [B, L], nonzero = real token
  at::Tensor pixel_values;    ///< float [B, C, H, W]
};

}  // namespace hawada
