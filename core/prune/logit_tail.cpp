#include "core/prune/logit_tail.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace hawada {
namespace {

// The sampler finds a draw's block of tokens by the blocks' masses, then the token inside its block.
constexpr int64_t kBlock = 256;

// The hot loops are written with GCC's vector types (8 floats) and built for AVX2 and for the baseline,
// chosen at load time; every operation is element-wise IEEE arithmetic in a fixed order, so both give
// the same bits.
#define HAWADA_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
// The helpers below take and return vectors but are always inlined into the clones: no call crosses an ABI.
#pragma GCC diagnostic ignored "-Wpsabi"
using v8f = float __attribute__((vector_size(32)));
using v8i = int32_t __attribute__((vector_size(32)));

[[gnu::always_inline]] inline v8f load8(const float* p) {
  v8f v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
[[gnu::always_inline]] inline void store8(float* p, v8f v) { __builtin_memcpy(p, &v, sizeof v); }
[[gnu::always_inline]] inline float lane_sum(v8f v) {
  float s = 0.0f;
  for (int j = 0; j < 8; ++j) s += v[j];
  return s;
}

// exp(x) for x <= 0 (Cephes' expf: a degree-6 polynomial on [-ln2/2, ln2/2], about 1 ulp), branch-free.
// Below -87 it gives exp(-87) (~1.6e-38): nil beside a sum that holds the row's maximum (1). NaN stays NaN.
[[gnu::always_inline]] inline v8f exp_nonpositive(v8f x) {
  x = x < -87.0f ? v8f{} - 87.0f : x;
  // Round to nearest by adding and removing 1.5 * 2^23 (exact for |t| < 2^22; no SSE4 rounding needed).
  const v8f t = x * 1.44269504088896341f;
  const v8f n = (t + 12582912.0f) - 12582912.0f;
  v8f r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  v8f p = v8f{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const v8f y = p * r * r + r + 1.0f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  return y * (v8f)bits;  // NOLINT: a vector cast reinterprets the bits
}
[[gnu::always_inline]] inline float exp_nonpositive(float x) {
  v8f v{};
  v[0] = x;
  return exp_nonpositive(v)[0];
}

HAWADA_VECTOR_CLONES float row_max(const float* l, int64_t V) {
  v8f a = v8f{} - std::numeric_limits<float>::infinity(), b = a;
  int64_t v = 0;
  for (; v + 16 <= V; v += 16) {
    const v8f x = load8(l + v), y = load8(l + v + 8);
    a = x > a ? x : a;
    b = y > b ? y : b;
  }
  float m = -std::numeric_limits<float>::infinity();
  for (; v < V; ++v) m = l[v] > m ? l[v] : m;
  for (int j = 0; j < 8; ++j) m = a[j] > m ? a[j] : m, m = b[j] > m ? b[j] : m;
  return m;
}

// The row's softmax numerators p = exp(l - m) into `p`, their sum per block of kBlock tokens into
// `block`; returns {sum p, sum p (l - m)} (what the log-sum-exp and the entropy need).
HAWADA_VECTOR_CLONES std::pair<double, double> exp_blocks(const float* l, int64_t V, float m, float* p, double* block) {
  double s0 = 0.0, s1 = 0.0;
  for (int64_t start = 0, b = 0; start < V; start += kBlock, ++b) {
    const int64_t end = std::min(V, start + kBlock);
    v8f a0{}, a1{}, c0{}, c1{};
    int64_t v = start;
    for (; v + 16 <= end; v += 16) {
      const v8f d = load8(l + v) - m, f = load8(l + v + 8) - m;
      const v8f e = exp_nonpositive(d), g = exp_nonpositive(f);
      store8(p + v, e);
      store8(p + v + 8, g);
      a0 += e, a1 += e * d, c0 += g, c1 += g * f;
    }
    float t0 = 0.0f, t1 = 0.0f;
    for (; v < end; ++v) {
      const float d = l[v] - m;
      p[v] = exp_nonpositive(d);
      t0 += p[v], t1 += p[v] * d;
    }
    const double b0 = static_cast<double>(lane_sum(a0)) + lane_sum(c0) + t0;
    block[b] = b0;
    s0 += b0, s1 += static_cast<double>(lane_sum(a1)) + lane_sum(c1) + t1;
  }
  return {s0, s1};
}

// The first token at or after v whose logit is strictly above `threshold`; V when none. Sixteen at a time.
HAWADA_VECTOR_CLONES int64_t first_above(const float* l, int64_t v, int64_t V, float threshold) {
  for (; v + 16 <= V; v += 16) {
    const v8i hit = (load8(l + v) > threshold) | (load8(l + v + 8) > threshold);
    int32_t any = 0;
    for (int j = 0; j < 8; ++j) any |= hit[j];
    if (any) break;
  }
  for (; v < V; ++v)
    if (l[v] > threshold) return v;
  return V;
}

// The k largest of the row, descending; ties: the lower id first (a token enters only if strictly
// larger than the k-th so far, so of equal values the earlier stays).
void row_topk(const float* l, int64_t V, int64_t k, std::vector<std::pair<float, int32_t>>& heap, float* values,
              int32_t* indices) {
  const auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  heap.clear();
  for (int64_t v = 0; v < k; ++v) heap.emplace_back(l[v], static_cast<int32_t>(v));
  std::make_heap(heap.begin(), heap.end(), better);  // front: the worst kept
  for (int64_t v = first_above(l, k, V, heap.front().first); v < V; v = first_above(l, v + 1, V, heap.front().first)) {
    std::pop_heap(heap.begin(), heap.end(), better);
    heap.back() = {l[v], static_cast<int32_t>(v)};
    std::push_heap(heap.begin(), heap.end(), better);
  }
  std::sort(heap.begin(), heap.end(), better);
  for (int64_t i = 0; i < k; ++i) values[i] = heap[i].first, indices[i] = heap[i].second;
}

// Inverse-CDF draws (as sample_logits: the first token whose running sum exceeds u * total) for the
// row's uniforms, then the distinct tokens with their counts packed to the front of the D slots.
void row_draws(const float* p, const double* block, int64_t V, double total, const float* uniforms, int64_t D,
               std::vector<float>& sorted, int32_t* ids, uint8_t* counts) {
  sorted.assign(uniforms, uniforms + D);
  std::sort(sorted.begin(), sorted.end());
  const int64_t last_block = (V - 1) / kBlock;
  int64_t v = 0, slot = -1;
  double below = 0.0;  // the sum of p over the tokens before v
  for (int64_t d = 0; d < D; ++d) {
    const double target = static_cast<double>(sorted[d]) * total;
    while (v < V - 1) {
      if (v % kBlock == 0 && v / kBlock < last_block && below + block[v / kBlock] <= target) {
        below += block[v / kBlock], v += kBlock;
        continue;
      }
      if (below + p[v] > target) break;
      below += p[v], ++v;
    }
    if (slot < 0 || ids[slot] != static_cast<int32_t>(v)) ids[++slot] = static_cast<int32_t>(v), counts[slot] = 0;
    ++counts[slot];
  }
  for (int64_t s = slot + 1; s < D; ++s) ids[s] = 0, counts[s] = 0;
}

// g[v] *= f, sixteen at a time.
HAWADA_VECTOR_CLONES void scale_row(float* g, int64_t V, float f) {
  int64_t v = 0;
  for (; v + 16 <= V; v += 16) store8(g + v, load8(g + v) * f), store8(g + v + 8, load8(g + v + 8) * f);
  for (; v < V; ++v) g[v] *= f;
}

// One student row against a sampled teacher row: on entry g holds exp(l - m) with sum s0, on exit weight x
// the gradient q - counts / D of the estimate -H + sum_j (counts_j / D) (-log q_j); returns the estimate.
double sampled_row(const float* l, float m, double s0, float* g, int64_t V, const int64_t* ids, const float* counts,
                   int64_t D, float entropy, float weight) {
  const double lse = m + std::log(s0);
  double total = 0.0, cross = 0.0;
  for (int64_t j = 0; j < D; ++j) total += counts[j], cross -= counts[j] * (l[ids[j]] - lse);
  total = std::max(total, 1.0);  // as sampled_kl_loss: a row without draws counts as one
  scale_row(g, V, static_cast<float>(weight / s0));
  for (int64_t j = 0; j < D; ++j) g[ids[j]] -= static_cast<float>(weight * counts[j] / total);
  return cross / total - entropy;
}

// One student row against a top-k teacher row (k < V, temperature 1), topk_kl_loss's coarsened KL over the
// k tokens and the tail: on entry g holds exp(l - m) with sum s0, on exit weight x the gradient, which is
// q_j - p_j on the top-k and q_j (1 - p_tail / q_tail) elsewhere; returns the KL.
double topk_row(const float* l, float m, double s0, float* g, int64_t V, const int64_t* idx, const float* values,
                int64_t k, float teacher_lse, float weight, std::vector<float>& saved) {
  const double lse = m + std::log(s0);
  saved.resize(static_cast<size_t>(k));
  double top_p = 0.0, top_q = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    top_p += std::exp(static_cast<double>(values[i]) - teacher_lse);
    saved[i] = g[idx[i]], top_q += saved[i];
  }
  const double p_tail = std::max(0.0, 1.0 - top_p);
  double q_rest = s0 - top_q;  // the tail's numerators
  if (q_rest < 1e-3 * s0) {    // the difference lost digits: the tail's own sum
    for (int64_t i = 0; i < k; ++i) g[idx[i]] = 0.0f;
    q_rest = 0.0;
    for (int64_t v = 0; v < V; ++v) q_rest += g[v];
  }
  const double log_q_tail = std::log(std::max(q_rest / s0, 1e-30));
  double kl = p_tail > 0.0 ? p_tail * (std::log(p_tail) - log_q_tail) : 0.0;
  for (int64_t i = 0; i < k; ++i) {
    const double log_p = static_cast<double>(values[i]) - teacher_lse;
    if (std::exp(log_p) > 0.0) kl += std::exp(log_p) * (log_p - (l[idx[i]] - lse));
  }
  const double ratio = p_tail > 0.0 ? p_tail / std::exp(log_q_tail) : 0.0;
  scale_row(g, V, static_cast<float>(weight / s0 * (1.0 - ratio)));
  for (int64_t i = 0; i < k; ++i)
    g[idx[i]] = static_cast<float>(weight * (saved[i] / s0 - std::exp(static_cast<double>(values[i]) - teacher_lse)));
  return kl;
}

// Reference path for devices other than the CPU: ATen's ops.
LogitTail aten_tail(const at::Tensor& logits, const TailRequest& request) {
  LogitTail out;
  if (request.top_k > 0) {
    const at::Tensor z = logits.to(at::kFloat);
    out.logsumexp = at::logsumexp(z, -1);
    auto [values, indices] = z.topk(request.top_k, -1, /*largest=*/true, /*sorted=*/true);
    out.topk_values = values;
    out.topk_indices = indices.to(at::kInt);
  }
  if (request.uniforms.defined()) out.sampled = sample_logits(logits, request.uniforms);
  return out;
}

}  // namespace

LogitTail logit_tail(const at::Tensor& logits, const TailRequest& request) {
  TORCH_CHECK(logits.dim() == 2, "logit_tail: logits [rows, vocab]");
  const int64_t N = logits.size(0), V = logits.size(1), k = request.top_k;
  TORCH_CHECK(k <= V, "logit_tail: top_k ", k, " > vocabulary ", V);
  const bool sample = request.uniforms.defined();
  const int64_t D = sample ? request.uniforms.size(1) : 0;
  if (sample)
    TORCH_CHECK(request.uniforms.dim() == 2 && request.uniforms.size(0) == N && D >= 1 && D <= 255,
                "logit_tail: uniforms [rows, 1..255 draws]");
  if (!logits.device().is_cpu()) return aten_tail(logits, request);

  const at::Tensor z = logits.to(at::kFloat).contiguous();
  const at::Tensor u = sample ? request.uniforms.to(at::kFloat).contiguous() : at::Tensor();
  const auto f32 = z.options(), i32 = z.options().dtype(at::kInt);
  LogitTail out;
  if (k > 0) {
    out.logsumexp = at::empty({N}, f32);
    out.topk_values = at::empty({N, k}, f32);
    out.topk_indices = at::empty({N, k}, i32);
  }
  if (sample) {
    out.sampled.ids = at::empty({N, D}, i32);
    out.sampled.counts = at::empty({N, D}, z.options().dtype(at::kByte));
    out.sampled.entropy = at::empty({N}, f32);
  }
  at::parallel_for(0, N, 4, [&](int64_t first, int64_t last) {
    std::vector<float> p(static_cast<size_t>(V)), sorted;
    std::vector<double> block(static_cast<size_t>((V + kBlock - 1) / kBlock));
    std::vector<std::pair<float, int32_t>> heap;
    for (int64_t r = first; r < last; ++r) {
      const float* l = z.const_data_ptr<float>() + r * V;
      const float m = row_max(l, V);
      const auto [s0, s1] = exp_blocks(l, V, m, p.data(), block.data());
      if (k > 0) {
        out.logsumexp.mutable_data_ptr<float>()[r] = static_cast<float>(m + std::log(s0));
        row_topk(l, V, k, heap, out.topk_values.mutable_data_ptr<float>() + r * k,
                 out.topk_indices.mutable_data_ptr<int32_t>() + r * k);
      }
      if (sample) {
        // H = lse - E_p[l] = log s0 - s1 / s0 (with l - m throughout); >= 0 up to rounding; NaN stays NaN.
        const double h = std::log(s0) - s1 / s0;
        out.sampled.entropy.mutable_data_ptr<float>()[r] = static_cast<float>(h < 0.0 ? 0.0 : h);
        row_draws(p.data(), block.data(), V, s0, u.const_data_ptr<float>() + r * D, D, sorted,
                  out.sampled.ids.mutable_data_ptr<int32_t>() + r * D,
                  out.sampled.counts.mutable_data_ptr<uint8_t>() + r * D);
      }
    }
  });
  return out;
}

KlGrad distill_kl_grad(const at::Tensor& student_logits, const TeacherRow& teacher, const at::Tensor& weight) {
  TORCH_CHECK(student_logits.dim() == 2 && student_logits.device().is_cpu(),
              "distill_kl_grad: CPU logits [rows, vocab]");
  const int64_t N = student_logits.size(0), V = student_logits.size(1), k = teacher.indices.size(-1);
  TORCH_CHECK(teacher.indices.sizes() == teacher.values.sizes() && teacher.indices.size(0) == N &&
                  teacher.scalar.numel() == N && weight.numel() == N,
              "distill_kl_grad: teacher rows [", N, ", k] and weights [", N, "]");
  TORCH_CHECK(teacher.sampled || k < V, "distill_kl_grad: a top-k row needs k < vocabulary");
  const at::Tensor z = student_logits.to(at::kFloat).contiguous();
  const at::Tensor idx = teacher.indices.to(at::kLong).contiguous();
  const at::Tensor val = teacher.values.to(at::kFloat).contiguous();
  const at::Tensor sc = teacher.scalar.to(at::kFloat).contiguous().view({N});
  const at::Tensor w = weight.to(at::kFloat).contiguous().view({N});
  TORCH_CHECK(idx.numel() == 0 || (idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < V),
              "distill_kl_grad: a teacher token id outside the vocabulary (", V, ")");
  KlGrad out{at::zeros({N}, z.options()), at::empty({N, V}, z.options())};
  at::parallel_for(0, N, 4, [&](int64_t first, int64_t last) {
    std::vector<double> block(static_cast<size_t>((V + kBlock - 1) / kBlock));
    std::vector<float> saved;
    for (int64_t r = first; r < last; ++r) {
      float* g = out.grad.mutable_data_ptr<float>() + r * V;
      const float wr = w.const_data_ptr<float>()[r];
      if (wr == 0.0f) {
        std::fill(g, g + V, 0.0f);
        continue;
      }
      const float* l = z.const_data_ptr<float>() + r * V;
      const float m = row_max(l, V);
      const double s0 = exp_blocks(l, V, m, g, block.data()).first;
      const int64_t* ir = idx.const_data_ptr<int64_t>() + r * k;
      const float* vr = val.const_data_ptr<float>() + r * k;
      const float s = sc.const_data_ptr<float>()[r];
      out.kl.mutable_data_ptr<float>()[r] =
          static_cast<float>(teacher.sampled ? sampled_row(l, m, s0, g, V, ir, vr, k, s, wr)
                                             : topk_row(l, m, s0, g, V, ir, vr, k, s, wr, saved));
    }
  });
  return out;
}

}  // namespace hawada
