#include "core/distill_loss.h"

#include <ATen/ATen.h>

#include <limits>

namespace hawada {

at::Tensor topk_kl_loss(const at::Tensor& student_logits, const at::Tensor& topk_values, const at::Tensor& topk_indices,
                        const at::Tensor& teacher_lse, double temperature, const at::Tensor& mask) {
  const at::Tensor s = student_logits.to(at::kFloat);
  const at::Tensor idx = topk_indices.to(at::kLong);
  const at::Tensor student_lse = at::logsumexp(s, -1, /*keepdim=*/true);

  at::Tensor teacher, student;
  if (idx.size(-1) == s.size(-1)) {
    // k == V: no tail exists. The top-k values are the whole distribution (renormalised, since
    // they were stored rounded to fp16/bf16).
    teacher = at::log_softmax(topk_values.to(at::kFloat), -1);
    student = s.gather(-1, idx) - student_lse;
  } else {
    // Teacher coarsened log-probabilities [N, k + 1]: top-k, then the tail 1 - sum (0 when rounding
    // makes it negative; p = 0 terms contribute nothing).
    const at::Tensor t_top = topk_values.to(at::kFloat) - teacher_lse.to(at::kFloat).unsqueeze(-1);
    const at::Tensor t_tail = at::log(at::clamp_min(1.0 - at::exp(t_top).sum(-1, true), 0.0));
    teacher = at::cat({t_top, t_tail}, -1);
    // Student: its logits at the teacher's top-k tokens, and the log-sum-exp of every other logit.
    const at::Tensor s_top = s.gather(-1, idx) - student_lse;
    const at::Tensor others = s.scatter(-1, idx, -std::numeric_limits<float>::infinity());
    student = at::cat({s_top, at::logsumexp(others, -1, true) - student_lse}, -1);
  }

  if (temperature != 1.0) {
    teacher = at::log_softmax(teacher / temperature, -1);
    student = at::log_softmax(student / temperature, -1);
  }
  const at::Tensor p = at::exp(teacher);
  // p log p with 0 log 0 = 0 for an empty tail.
  at::Tensor kl = (at::where(p > 0, p * (teacher - student), at::zeros_like(p))).sum(-1) * (temperature * temperature);
  if (mask.defined()) {
    const at::Tensor m = mask.to(at::kFloat);
    return (kl * m).sum() / at::clamp_min(m.sum(), 1.0);
  }
  return kl.mean();
}

}  // namespace hawada
