#include "core/prune/distill_loss.h"

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
    // Student: its log-probabilities at the teacher's top-k tokens, and of the tail. The tail is
    // log(1 - sum of the top-k probabilities): one pass over the vocabulary fewer than a
    // log-sum-exp over the other logits, which matters at a 128k vocabulary. Where the tail
    // is tiny (< 1e-3) that difference loses fp32 digits, so those rows alone take the exact
    // log-sum-exp of every logit outside the top-k.
    const at::Tensor s_top = s.gather(-1, idx) - student_lse;
    const at::Tensor rest = 1.0 - at::exp(s_top).sum(-1, true);
    at::Tensor tail = at::log(at::clamp_min(rest, 1e-30));
    const at::Tensor tiny = (rest.detach().squeeze(-1) < 1e-3).nonzero().squeeze(-1);
    if (tiny.numel() > 0) {
      const at::Tensor rows = s.index_select(0, tiny);
      const at::Tensor others = rows.scatter(-1, idx.index_select(0, tiny), -std::numeric_limits<float>::infinity());
      tail = tail.index_copy(0, tiny, at::logsumexp(others, -1, true) - student_lse.index_select(0, tiny));
    }
    student = at::cat({s_top, tail}, -1);
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

at::Tensor mean_pool(const at::Tensor& hidden, const at::Tensor& mask) {
  const at::Tensor h = hidden.to(at::kFloat);
  if (!mask.defined()) return h.mean(1);
  const at::Tensor m = mask.ne(0).to(at::kFloat).unsqueeze(-1);
  return (h * m).sum(1) / m.sum(1).clamp_min(1.0);
}

at::Tensor widen_channels(const at::Tensor& student, const at::Tensor& channels, int64_t width) {
  if (!channels.defined()) return student;
  std::vector<int64_t> shape(student.sizes().begin(), student.sizes().end());
  shape.back() = width;
  return at::zeros(shape, student.options()).index_copy(-1, channels.to(student.device()), student);
}

SampledLogits sample_logits(const at::Tensor& logits, const at::Tensor& uniforms) {
  TORCH_CHECK(uniforms.dim() == 2 && uniforms.size(0) == logits.size(0) && uniforms.size(1) <= 255,
              "sample_logits: uniforms [rows, draws <= 255]");
  const at::Tensor z = logits.to(at::kFloat);
  const int64_t V = z.size(-1), D = uniforms.size(1);
  const at::Tensor lse = at::logsumexp(z, -1, /*keepdim=*/true);
  const at::Tensor p = at::exp(z - lse);
  SampledLogits out;
  out.entropy = (lse.squeeze(-1) - (p * z).sum(-1)).clamp_min(0.0);
  // Inverse CDF; the fp32 running sum ends within ~1e-6 of 1, so the draws are scaled to its end.
  const at::Tensor cdf = p.cumsum(-1);
  const at::Tensor u = uniforms.to(cdf.device()).to(at::kFloat) * cdf.slice(-1, V - 1, V);
  const at::Tensor drawn = at::searchsorted(cdf, u, /*out_int32=*/false, /*right=*/true).clamp_max(V - 1);
  // Distinct tokens with their counts, packed to the front of each row's D slots.
  const at::Tensor sorted = std::get<0>(drawn.sort(-1));
  const at::Tensor fresh = at::cat({at::ones({sorted.size(0), 1}, sorted.options().dtype(at::kBool)),
                                    sorted.slice(1, 1).ne(sorted.slice(1, 0, D - 1))},
                                   1);
  const at::Tensor slot = fresh.to(at::kLong).cumsum(1) - 1;
  out.counts =
      at::zeros({sorted.size(0), D}, sorted.options().dtype(at::kLong)).scatter_add_(1, slot, at::ones_like(slot));
  out.ids = at::zeros_like(out.counts).scatter_(1, slot, sorted).to(at::kInt);
  out.counts = out.counts.to(at::kByte);
  return out;
}

at::Tensor sampled_kl_loss(const at::Tensor& student_logits, const at::Tensor& ids, const at::Tensor& counts,
                           const at::Tensor& entropy, const at::Tensor& mask) {
  const at::Tensor s = student_logits.to(at::kFloat);
  const at::Tensor w = counts.to(at::kFloat);
  const at::Tensor log_q = s.gather(-1, ids.to(at::kLong)) - at::logsumexp(s, -1, /*keepdim=*/true);
  // Per row: the draws' mean -log q (an unbiased cross-entropy) minus the teacher's entropy.
  const at::Tensor kl = -(w * log_q).sum(-1) / w.sum(-1).clamp_min(1.0) - entropy.to(at::kFloat);
  if (!mask.defined()) return kl.mean();
  const at::Tensor m = mask.to(at::kFloat);
  return (kl * m).sum() / m.sum().clamp_min(1.0);
}

HiddenStateLoss hidden_state_loss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& mask,
                                  const at::Tensor& channels) {
  const at::Tensor t = teacher.to(at::kFloat);
  const at::Tensor s = widen_channels(student.to(at::kFloat), channels, t.size(-1));
  const at::Tensor m = mask.defined() ? mask.ne(0).to(at::kFloat) : at::ones({s.size(0), s.size(1)}, s.options());
  const at::Tensor valid = m.sum().clamp_min(1.0);
  // Relative per token: an encoder's hidden states have a few channels far larger than the rest, and
  // tokens differ in norm; the tiny clamp only guards an all-zero teacher row.
  const at::Tensor rel = (s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-12);
  HiddenStateLoss out;
  out.token = (rel * m).sum() / valid;
  const at::Tensor cos = at::cosine_similarity(mean_pool(s, m), mean_pool(t, m), -1, 1e-8);
  out.pooled = (1 - cos).mean();
  out.loss = out.token + out.pooled;
  return out;
}

}  // namespace hawada
