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

}  // namespace hawada
