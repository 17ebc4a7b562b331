#include "core/cost_model.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/errors.h"

namespace hawada {
namespace {

// Every formula is written once, over a scalar type T: double for concrete shapes, a 0-dim tensor
// for the differentiable expected cost of training (so the budget and the search price a shape the
// same way).
double lift(double v, double) { return v; }
at::Tensor lift(double v, const at::Tensor& like) { return at::scalar_tensor(v, like.options()); }
double max_of(double a, double b) { return std::max(a, b); }
at::Tensor max_of(const at::Tensor& a, const at::Tensor& b) { return at::maximum(a, b); }

// One matrix product [m, k] x [k, n]: its FLOPs and the bytes of its operands and result.
template <class T>
struct Gemm {
  T m, k, n;
  T flops() const { return m * k * n * 2.0; }
  T bytes(double e) const { return (m * k + k * n + m * n) * e; }
};

// Widths of one layer: residual width h, query heads, FFN channels.
template <class T>
struct Widths {
  T h, heads, f;
};

// Calls fn(Gemm) for every matrix product of one forward pass, in order (per layer, then the head).
template <class T, class Fn>
void for_each_gemm(const ModelShape& s, const std::vector<Widths<T>>& layers, int64_t batch, int64_t tokens, Fn fn) {
  const T& like = layers.front().h;
  const T t = lift(static_cast<double>(batch * tokens), like);
  const double hd = static_cast<double>(s.head_dim), kv = static_cast<double>(s.kv_heads * s.head_dim);
  if (s.family == ModelShape::Family::vit) {
    const double patches = static_cast<double>((tokens - 1) * batch);
    fn(Gemm<T>{lift(patches, like), lift(static_cast<double>(s.channels * s.patch_size * s.patch_size), like),
               layers.front().h});
  }
  for (const Widths<T>& w : layers) {
    const T q = w.heads * hd;
    const T kvw = s.family == ModelShape::Family::vit ? q : lift(kv, like);
    fn(Gemm<T>{t, w.h, q});
    fn(Gemm<T>{t, w.h, kvw});
    fn(Gemm<T>{t, w.h, kvw});
    // Attention scores and weighted values, per head (full square: causal kernels may skip half).
    const T rows = w.heads * static_cast<double>(batch * tokens);
    fn(Gemm<T>{rows, lift(hd, like), lift(static_cast<double>(tokens), like)});
    fn(Gemm<T>{rows, lift(static_cast<double>(tokens), like), lift(hd, like)});
    fn(Gemm<T>{t, q, w.h});
    fn(Gemm<T>{t, w.h, w.f});                                          // gate / fc1
    if (s.family == ModelShape::Family::llama) fn(Gemm<T>{t, w.h, w.f});  // up
    fn(Gemm<T>{t, w.f, w.h});                                          // down / fc2
  }
  const T& h = layers.back().h;
  if (s.family == ModelShape::Family::llama) fn(Gemm<T>{t, h, lift(static_cast<double>(s.vocab), like)});
  else if (s.classifier)
    fn(Gemm<T>{lift(static_cast<double>(batch), like), h, lift(static_cast<double>(s.num_labels), like)});
}

template <class T>
T parameters(const ModelShape& s, const std::vector<Widths<T>>& layers) {
  const double hd = static_cast<double>(s.head_dim), kv = static_cast<double>(s.kv_heads * s.head_dim);
  const T& h = layers.front().h;
  T total = lift(0.0, h);
  for (const Widths<T>& w : layers) {
    const T q = w.heads * hd;
    if (s.family == ModelShape::Family::llama) {
      total = total + w.h * q * 2.0 + w.h * (2.0 * kv) + w.h * w.f * 3.0 + w.h * 2.0;
      if (s.attention_bias) total = total + q + (2.0 * kv) + w.h;
      if (s.mlp_bias) total = total + w.f * 2.0 + w.h;
    } else {
      // q, k, v, o (+ o bias), fc1 and fc2 with biases, two LayerNorms.
      total = total + w.h * q * 4.0 + w.h + w.h * w.f * 2.0 + w.f + w.h + w.h * 4.0;
      if (s.qkv_bias) total = total + q * 3.0;
    }
  }
  if (s.family == ModelShape::Family::llama) {
    total = total + h * static_cast<double>(s.vocab * (s.tied ? 1 : 2)) + h;  // embedding (+ lm_head), final norm
  } else {
    const double patches = static_cast<double>((s.image_size / s.patch_size) * (s.image_size / s.patch_size));
    // patch projection + bias, CLS token, position embeddings, final LayerNorm
    total = total + h * static_cast<double>(s.channels * s.patch_size * s.patch_size) + h * 2.0 + h * (patches + 1) +
            h * 2.0;
    if (s.classifier) total = total + h * static_cast<double>(s.num_labels) + static_cast<double>(s.num_labels);
    if (s.pooler) total = total + h * h + h;
  }
  return total;
}

template <class T>
T latency(const ModelShape& s, const std::vector<Widths<T>>& layers, int64_t batch, int64_t tokens,
          const DeviceRates& r, int64_t bytes_per_element) {
  T seconds = lift(0.0, layers.front().h);
  for_each_gemm(s, layers, batch, tokens, [&](const Gemm<T>& g) {
    seconds = seconds + max_of(g.flops() / r.flops_per_s, g.bytes(static_cast<double>(bytes_per_element)) / r.bytes_per_s);
  });
  return seconds;
}

std::vector<Widths<double>> dense(const ModelShape& s) {
  return std::vector<Widths<double>>(static_cast<size_t>(s.layers),
                                     {static_cast<double>(s.hidden), static_cast<double>(s.heads), static_cast<double>(s.ffn)});
}

// Per-layer widths from expected counts; an undefined tensor means the dense count.
std::vector<Widths<at::Tensor>> widths(const ModelShape& s, const GateCounts& c) {
  // On the device of the counts (a GPU run keeps its gates there).
  const at::Tensor& any = c.heads.defined() ? c.heads : c.ffn.defined() ? c.ffn : c.hidden;
  const auto opts = at::TensorOptions().dtype(at::kDouble).device(any.defined() ? any.device() : at::Device(at::kCPU));
  auto per_layer = [&](const at::Tensor& t, int64_t dense, const char* what) {
    if (!t.defined()) return at::full({s.layers}, static_cast<double>(dense), opts);
    HAWADA_ASSERT(t.dim() == 1 && t.size(0) == s.layers, std::string("GateCounts.") + what + " is [layers]");
    return t.to(at::kDouble);
  };
  const at::Tensor heads = per_layer(c.heads, s.heads, "heads"), ffn = per_layer(c.ffn, s.ffn, "ffn");
  const at::Tensor h = c.hidden.defined() ? c.hidden.to(at::kDouble).reshape({}) : at::scalar_tensor(static_cast<double>(s.hidden), opts);
  std::vector<Widths<at::Tensor>> w;
  for (int64_t l = 0; l < s.layers; ++l) w.push_back({h, heads[l], ffn[l]});
  return w;
}

}  // namespace

int64_t parameter_count(const ModelShape& s) {
  HAWADA_ASSERT(s.layers > 0, "a shape has layers");
  return static_cast<int64_t>(std::llround(parameters(s, dense(s))));
}

ForwardCost forward_cost(const ModelShape& s, int64_t batch, int64_t tokens, int64_t bytes_per_element) {
  ForwardCost c;
  for_each_gemm(s, dense(s), batch, tokens, [&](const Gemm<double>& g) {
    c.flops += g.flops();
    c.bytes += g.bytes(static_cast<double>(bytes_per_element));
  });
  return c;
}

double latency_seconds(const ModelShape& s, int64_t batch, int64_t tokens, const DeviceRates& r,
                       int64_t bytes_per_element) {
  return latency(s, dense(s), batch, tokens, r, bytes_per_element);
}

at::Tensor expected_parameters(const ModelShape& s, const GateCounts& counts) { return parameters(s, widths(s, counts)); }

at::Tensor expected_latency(const ModelShape& s, const GateCounts& counts, int64_t batch, int64_t tokens,
                            const DeviceRates& rates, int64_t bytes_per_element) {
  return latency(s, widths(s, counts), batch, tokens, rates, bytes_per_element);
}

}  // namespace hawada
