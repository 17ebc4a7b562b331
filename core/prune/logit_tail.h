// The teacher cache's tail: what is kept of each row of LM-head logits (its log-sum-exp, its top-k, or
// tokens drawn from its softmax with the distribution's entropy), computed row by row in one fused pass
// over the vocabulary while the row is in cache, instead of ATen's separate full-width passes (max, exp,
// sum, softmax, cumsum, search, log-softmax). On the CPU this is several times faster than the ATen ops
// it replaces and never allocates a second [rows, vocab] tensor; other devices take the ATen ops.
//
// The student's side (distill_kl_grad): the distillation loss against such a cached row and its gradient
// in the student's logits, also one fused pass per row, for a caller that back-propagates the gradient
// itself (logits.backward(grad)) instead of building autograd's graph over the [rows, vocab] ops.
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

/// A cached teacher row as the student's loss reads it: sampled (ids, counts, entropy: sampled_kl_loss's
/// estimate) or top-k (topk_indices, topk_values, logsumexp: topk_kl_loss's top-k + tail KL at
/// temperature 1). Rows [N, k]; any integer/float dtypes.
struct TeacherRow {
  bool sampled = false;
  at::Tensor indices;  ///< sampled ids or top-k token ids
  at::Tensor values;   ///< sampled counts or top-k teacher logits
  at::Tensor scalar;   ///< [N]: the entropy (sampled) or the teacher's log-sum-exp (top-k)
};
/// Per-row KL and the gradient of sum_r weight_r KL_r in the student logits.
struct KlGrad {
  at::Tensor kl;    ///< fp32 [N]: each row's KL (as sampled_kl_loss / topk_kl_loss compute it for one row)
  at::Tensor grad;  ///< fp32 [N, V]: d(sum_r weight[r] kl[r]) / d student_logits
};
/// The distillation loss of `student_logits` [N, V] (any float dtype) against `teacher` and its gradient,
/// with `weight` fp32 [N] (0 skips a row: its gradient is 0 and its KL is not computed, reported as 0).
/// Equals the autograd gradient of topk_kl_loss / sampled_kl_loss to fp32 rounding. CPU rows run in
/// parallel on the intra-op threads; other devices take the ATen ops and autograd.
KlGrad distill_kl_grad(const at::Tensor& student_logits, const TeacherRow& teacher, const at::Tensor& weight);

}  // namespace hawada
