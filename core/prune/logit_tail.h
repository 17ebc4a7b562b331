// The teacher cache's tail: what is kept of each row of LM-head logits (its log-sum-exp, its top-k, or
// tokens drawn from its softmax with the distribution's entropy), computed row by row in one fused pass
// over the vocabulary while the row is in cache, instead of ATen's separate full-width passes (max, exp,
// sum, softmax, cumsum, search, log-softmax). On the CPU this is several times faster than the ATen ops
// it replaces and never allocates a second [rows, vocab] tensor; other devices take the ATen ops.
#pragma once

#include <ATen/core/Tensor.h>

#include "core/prune/distill_loss.h"

namespace hawada {

/// What to compute of each row.
struct TailRequest {
  int64_t top_k = 0;    ///< > 0: the k largest logits (descending; ties: the lower id first) and the log-sum-exp
  at::Tensor uniforms;  ///< defined: fp32 [N, D] in [0, 1), the draws of sample_logits (D <= 255)
};

/// The rows' statistics; the fields a request did not ask for are undefined.
struct LogitTail {
  at::Tensor logsumexp;     ///< fp32 [N] (with top_k)
  at::Tensor topk_values;   ///< fp32 [N, k]
  at::Tensor topk_indices;  ///< int32 [N, k]
  SampledLogits sampled;    ///< with uniforms: as sample_logits gives for the same rows and uniforms
};

/// The tail of `logits` [N, V] (any float dtype). CPU rows run in parallel on the intra-op threads. The
/// result equals the ATen reference (logsumexp, topk, sample_logits) to fp32 rounding: a draw whose
/// uniform lies within rounding of a token boundary may land on the neighbouring token.
LogitTail logit_tail(const at::Tensor& logits, const TailRequest& request);

}  // namespace hawada
