#include "core/cost_model.h"

#include <algorithm>
#include <vector>

namespace hawada {
namespace {

// One matrix product [m, k] x [k, n]: its FLOPs and the bytes of its operands and result.
struct Gemm {
  double m, k, n;
  double flops() const { return 2 * m * k * n; }
  double bytes(double e) const { return e * (m * k + k * n + m * n); }
};

// The matrix products of one forward pass, in order (per layer, then the head).
std::vector<Gemm> gemms(const ModelShape& s, int64_t batch, int64_t tokens) {
  const double t = static_cast<double>(batch * tokens), h = s.hidden, q = s.heads * s.head_dim,
               kv = s.kv_heads * s.head_dim, f = s.ffn;
  std::vector<Gemm> g;
  if (s.family == ModelShape::Family::vit) {
    const double patches = static_cast<double>(tokens - 1) * batch;
    g.push_back({patches, static_cast<double>(s.channels * s.patch_size * s.patch_size), h});
  }
  for (int64_t l = 0; l < s.layers; ++l) {
    g.push_back({t, h, q});
    g.push_back({t, h, kv});
    g.push_back({t, h, kv});
    // Attention scores and weighted values, per head (full square: causal kernels may skip half): [tokens, head_dim] x [head_dim, tokens] and back.
    const double heads = static_cast<double>(batch * s.heads);
    g.push_back({heads * tokens, static_cast<double>(s.head_dim), static_cast<double>(tokens)});
    g.push_back({heads * tokens, static_cast<double>(tokens), static_cast<double>(s.head_dim)});
    g.push_back({t, q, h});
    if (s.family == ModelShape::Family::llama) {
      g.push_back({t, h, f});  // gate
      g.push_back({t, h, f});  // up
    } else {
      g.push_back({t, h, f});  // fc1
    }
    g.push_back({t, f, h});  // down / fc2
  }
  if (s.family == ModelShape::Family::llama) g.push_back({t, h, static_cast<double>(s.vocab)});
  else if (s.classifier) g.push_back({static_cast<double>(batch), h, static_cast<double>(s.num_labels)});
  return g;
}

}  // namespace

int64_t parameter_count(const ModelShape& s) {
  const int64_t h = s.hidden, q = s.heads * s.head_dim, kv = s.kv_heads * s.head_dim, f = s.ffn;
  int64_t layer = 0, total = 0;
  if (s.family == ModelShape::Family::llama) {
    layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h;
    if (s.attention_bias) layer += q + 2 * kv + h;
    if (s.mlp_bias) layer += 2 * f + h;
    total = s.vocab * h * (s.tied ? 1 : 2) + h;  // embedding (+ lm_head), final norm
  } else {
    layer = 3 * h * q + q * h + h + 2 * h * f + f + h + 4 * h;  // q,k,v,o (+o bias), fc1, fc2, 2 LayerNorms
    if (s.qkv_bias) layer += 3 * q;
    const int64_t patches = (s.image_size / s.patch_size) * (s.image_size / s.patch_size);
    total = h * s.channels * s.patch_size * s.patch_size + h + h + (patches + 1) * h + 2 * h;
    if (s.classifier) total += s.num_labels * h + s.num_labels;
    if (s.pooler) total += h * h + h;
  }
  return total + s.layers * layer;
}

ForwardCost forward_cost(const ModelShape& s, int64_t batch, int64_t tokens, int64_t bytes_per_element) {
  ForwardCost c;
  for (const Gemm& g : gemms(s, batch, tokens)) {
    c.flops += g.flops();
    c.bytes += g.bytes(static_cast<double>(bytes_per_element));
  }
  return c;
}

double latency_seconds(const ModelShape& s, int64_t batch, int64_t tokens, const DeviceRates& r,
                       int64_t bytes_per_element) {
  double seconds = 0;
  for (const Gemm& g : gemms(s, batch, tokens))
    seconds += std::max(g.flops() / r.flops_per_s, g.bytes(static_cast<double>(bytes_per_element)) / r.bytes_per_s);
  return seconds;
}

}  // namespace hawada
