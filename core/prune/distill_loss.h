// Distillation loss against the cached teacher: KL(teacher || student) over the teacher's top-k
// tokens plus one tail bucket holding the rest of each distribution's mass.
//
// Per token, the teacher's coarsened distribution is p_i = exp(v_i - lse) for its top-k tokens and
// p_tail = 1 - sum_i p_i; the student's is q_i = softmax(s)_i at the same tokens and
// q_tail = sum of softmax(s) over every other token (computed as a log-sum-exp over those logits, so
// a tiny tail keeps its precision). KL over these k + 1 outcomes is exact for the coarsened pair.
// With temperature T != 1 both coarsened distributions are tempered (log-probabilities / T,
// renormalised) and the KL is scaled by T^2, as in Hinton et al.'s distillation; at T = 1 this is
// the exact coarsened KL. When k equals the vocabulary there is no tail and the stored values are
// renormalised (they were rounded to fp16/bf16).
#pragma once

#include <ATen/core/Tensor.h>

namespace hawada {

/// Mean over valid tokens of KL(teacher || student) on top-k + tail.
///   student_logits [N, V] (any float dtype; computed in fp32), topk_values [N, k] (teacher logits),
///   topk_indices [N, k] (int), teacher_lse [N] (log-sum-exp of the full teacher logits),
///   mask [N] optional (nonzero = count this token). Differentiable in student_logits.
at::Tensor topk_kl_loss(const at::Tensor& student_logits, const at::Tensor& topk_values, const at::Tensor& topk_indices,
                        const at::Tensor& teacher_lse, double temperature = 1.0, const at::Tensor& mask = {});

/// A teacher distribution sampled for the cache (Anshumann et al. 2025, "Sparse Logit Sampling"): per row
/// of logits, D draws with replacement from softmax(logits), kept as the distinct tokens with their counts,
/// and the distribution's entropy. With them, -H + sum_v (count_v / D) (-log q_v) is an unbiased estimate of
/// KL(p || q) for any student q, and its gradient in the student's logits, q - count / D, is unbiased for
/// the exact q - p: no tail bucket, no top-k bias.
struct SampledLogits {
  at::Tensor ids;      ///< int32 [N, D]: the distinct tokens drawn, in ascending order, then 0 (count 0) slots
  at::Tensor counts;   ///< uint8 [N, D]: how often each was drawn (the counts of a row sum to D)
  at::Tensor entropy;  ///< fp32 [N]: H(softmax(logits)) in nats
};
/// Draws the rows' tokens by inverse CDF from `uniforms` [N, D] in [0, 1) (drawn by the caller from a
/// generator keyed by sample and position, so that a rerun or another world size draws the same); logits
/// [N, V] any float dtype, computed in fp32 on their device. D <= 255.
SampledLogits sample_logits(const at::Tensor& logits, const at::Tensor& uniforms);
/// Mean over valid tokens of the unbiased estimate of KL(teacher || student) from sampled teacher tokens
/// (see SampledLogits): student_logits [N, V], ids [N, D] (int), counts [N, D] (any int or float type),
/// entropy [N], mask [N] optional. Differentiable in student_logits.
at::Tensor sampled_kl_loss(const at::Tensor& student_logits, const at::Tensor& ids, const at::Tensor& counts,
                           const at::Tensor& entropy, const at::Tensor& mask = {});

/// The two terms of hidden-state distillation (encoders without a head, e.g. sentence encoders).
struct HiddenStateLoss {
  at::Tensor loss;    ///< token + pooled: what is minimised (fp32 scalar, differentiable)
  at::Tensor token;   ///< mean over valid tokens of |s - t|^2 / |t|^2 (relative squared error)
  at::Tensor pooled;  ///< mean over samples of 1 - cos(mean-pooled s, mean-pooled t)
};
/// Hidden-state distillation loss of student [B, L, H] against teacher [B, L, H] (any float dtypes;
/// computed in fp32), over the tokens of `mask` [B, L] (nonzero = real token; undefined = all). The
/// pooled term is the quantity a sentence encoder is judged by (the cosine of mean-pooled embeddings);
/// the token term keeps every position close, scale-free. Differentiable in `student`.
/// A student narrower than the teacher (`channels` int64 [H'], the teacher channel of each student
/// channel) is compared in the teacher's coordinates, its dropped channels as zeros: what it lost counts.
HiddenStateLoss hidden_state_loss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask = {},
                                  const at::Tensor& channels = {});
/// `student` [..., H'] placed at `channels` of a zero tensor [..., width] (differentiable); itself when
/// channels is undefined.
at::Tensor widen_channels(const at::Tensor& student, const at::Tensor& channels, int64_t width);

/// Mean pooling over the real tokens: [B, L, H] and mask [B, L] (undefined = all) -> [B, H] in fp32.
at::Tensor mean_pool(const at::Tensor& hidden, const at::Tensor& mask);

}  // namespace hawada
