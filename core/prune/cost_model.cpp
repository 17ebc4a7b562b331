#include "core/prune/cost_model.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/base/errors.h"

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

// Widths of one layer: residual width h, query heads, FFN channels, and whether the layer is kept
// (1 for a concrete shape; a keep probability in training's expectation).
template <class T>
struct Widths {
  T h, heads, f, keep;
};

// Rows, inner and outer width of a product outside the layers (0 stands for the hidden width h).
template <class T>
Gemm<T> outer_gemm(const OuterProduct& p, const T& h, int64_t batch, int64_t tokens) {
  const double rows =
      p.rows_per_token * static_cast<double>(batch * tokens) + p.rows_per_sample * static_cast<double>(batch);
  auto width = [&](int64_t w) { return w == 0 ? h : lift(static_cast<double>(w), h); };
  return Gemm<T>{lift(rows, h), width(p.in), width(p.out)};
}

// Calls fn(Gemm, times) for every matrix product of one forward pass, in order (before the layers, per
// layer, after them): the product is done `times` times (attention: once per sequence and kv head),
// weighted by the layer's keep. Each of the `tokens` new tokens attends to `context` keys.
template <class T, class Fn>
void for_each_gemm(const ModelShape& s, const std::vector<Widths<T>>& layers, int64_t batch, int64_t tokens,
                   int64_t context, Fn fn) {
  const ShapeTraits& tr = s.traits;
  const T& like = layers.front().h;
  const T one = lift(1.0, like);
  const T t = lift(static_cast<double>(batch * tokens), like);
  const double hd = static_cast<double>(s.head_dim), kv = static_cast<double>(s.kv_heads * s.head_dim);
  const double keys = static_cast<double>(context > 0 ? context : tokens);
  for (const OuterProduct& p : tr.before) fn(outer_gemm(p, layers.front().h, batch, tokens), one);
  for (const Widths<T>& w : layers) {
    const T q = w.heads * hd;
    const T kvw = tr.kv_groups ? lift(kv, like) : q;
    fn(Gemm<T>{t, w.h, q}, w.keep);
    fn(Gemm<T>{t, w.h, kvw}, w.keep);
    fn(Gemm<T>{t, w.h, kvw}, w.keep);
    // Attention scores and weighted values (full square: causal kernels may skip half): per sequence and
    // kv head, its query heads' rows against that head's cached keys and values, which are read once.
    const T groups = tr.kv_groups ? lift(static_cast<double>(s.kv_heads), like) : w.heads;
    const T rows = (tr.kv_groups ? w.heads / static_cast<double>(s.kv_heads) : one) * static_cast<double>(tokens);
    const T count = groups * static_cast<double>(batch) * w.keep;
    fn(Gemm<T>{rows, lift(hd, like), lift(keys, like)}, count);
    fn(Gemm<T>{rows, lift(keys, like), lift(hd, like)}, count);
    fn(Gemm<T>{t, q, w.h}, w.keep);
    for (int m = 1; m < tr.mlp_matrices; ++m) fn(Gemm<T>{t, w.h, w.f}, w.keep);  // gate, up / fc1
    fn(Gemm<T>{t, w.f, w.h}, w.keep);                                            // down / fc2
  }
  for (const OuterProduct& p : tr.after) fn(outer_gemm(p, layers.back().h, batch, tokens), one);
}

template <class T>
T parameters(const ModelShape& s, const std::vector<Widths<T>>& layers, ParameterScope scope) {
  const ShapeTraits& tr = s.traits;
  const double hd = static_cast<double>(s.head_dim), kv = static_cast<double>(s.kv_heads * s.head_dim);
  const T& h = layers.front().h;
  T total = lift(0.0, h);
  for (const Widths<T>& w : layers) {
    const T q = w.heads * hd;
    const T kvw = tr.kv_groups ? lift(kv, h) : q;
    T layer = w.h * q * 2.0 + w.h * kvw * 2.0 + w.h * w.f * static_cast<double>(tr.mlp_matrices) +
              w.h * static_cast<double>(tr.norm_vectors);
    if (tr.qkv_bias) layer = layer + q + kvw * 2.0;
    if (tr.out_bias) layer = layer + w.h;
    if (tr.mlp_in_bias) layer = layer + w.f * static_cast<double>(tr.mlp_matrices - 1);
    if (tr.mlp_out_bias) layer = layer + w.h;
    if (tr.qk_norm) layer = layer + lift(2.0 * hd, h);
    total = total + layer * w.keep;
  }
  const double h1 = tr.outer_h1 - (scope == ParameterScope::non_embedding ? tr.embedding_h1 : 0.0);
  return total + h * h * tr.outer_h2 + h * h1 + tr.outer_h0;
}

template <class T>
T latency(const ModelShape& s, const std::vector<Widths<T>>& layers, int64_t batch, int64_t tokens,
          const DeviceRates& r, int64_t bytes_per_element, int64_t context) {
  T seconds = lift(0.0, layers.front().h);
  for_each_gemm(s, layers, batch, tokens, context, [&](const Gemm<T>& g, const T& weight) {
    seconds =
        seconds +
        max_of(g.flops() / r.flops_per_s, g.bytes(static_cast<double>(bytes_per_element)) / r.bytes_per_s) * weight;
  });
  for (const Widths<T>& w : layers) seconds = seconds + w.keep * r.layer_overhead_s;
  return seconds;
}

std::vector<Widths<double>> dense(const ModelShape& s) {
  return std::vector<Widths<double>>(
      static_cast<size_t>(s.layers),
      {static_cast<double>(s.hidden), static_cast<double>(s.heads), static_cast<double>(s.ffn), 1.0});
}

// Per-layer widths from expected counts; an undefined tensor means the dense count.
std::vector<Widths<at::Tensor>> widths(const ModelShape& s, const GateCounts& c) {
  // On the device of the counts (a GPU run keeps its gates there).
  const at::Tensor& any = c.heads.defined()    ? c.heads
                          : c.ffn.defined()    ? c.ffn
                          : c.hidden.defined() ? c.hidden
                                               : c.layers;
  const auto opts = at::TensorOptions().dtype(at::kDouble).device(any.defined() ? any.device() : at::Device(at::kCPU));
  auto per_layer = [&](const at::Tensor& t, int64_t dense, const char* what) {
    if (!t.defined()) return at::full({s.layers}, static_cast<double>(dense), opts);
    HAWADA_ASSERT(t.dim() == 1 && t.size(0) == s.layers, std::string("GateCounts.") + what + " is [layers]");
    return t.to(at::kDouble);
  };
  const at::Tensor heads = per_layer(c.heads, s.heads, "heads"), ffn = per_layer(c.ffn, s.ffn, "ffn");
  const at::Tensor keep = per_layer(c.layers, 1, "layers");
  const at::Tensor h = c.hidden.defined() ? c.hidden.to(at::kDouble).reshape({})
                                          : at::scalar_tensor(static_cast<double>(s.hidden), opts);
  std::vector<Widths<at::Tensor>> w;
  for (int64_t l = 0; l < s.layers; ++l) w.push_back({h, heads[l], ffn[l], keep[l]});
  return w;
}

}  // namespace

int64_t parameter_count(const ModelShape& s, ParameterScope scope) {
  HAWADA_ASSERT(s.layers > 0, "a shape has layers");
  return static_cast<int64_t>(std::llround(parameters(s, dense(s), scope)));
}

ForwardCost forward_cost(const ModelShape& s, int64_t batch, int64_t tokens, int64_t bytes_per_element) {
  ForwardCost c;
  for_each_gemm(s, dense(s), batch, tokens, 0, [&](const Gemm<double>& g, double times) {
    c.flops += g.flops() * times;
    c.bytes += g.bytes(static_cast<double>(bytes_per_element)) * times;
  });
  return c;
}

double latency_seconds(const ModelShape& s, int64_t batch, int64_t tokens, const DeviceRates& r,
                       int64_t bytes_per_element, int64_t context) {
  return latency(s, dense(s), batch, tokens, r, bytes_per_element, context);
}

at::Tensor expected_parameters(const ModelShape& s, const GateCounts& counts, ParameterScope scope) {
  return parameters(s, widths(s, counts), scope);
}

at::Tensor expected_latency(const ModelShape& s, const GateCounts& counts, int64_t batch, int64_t tokens,
                            const DeviceRates& rates, int64_t bytes_per_element, int64_t context) {
  return latency(s, widths(s, counts), batch, tokens, rates, bytes_per_element, context);
}

}  // namespace hawada
