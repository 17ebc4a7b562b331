#include "adapters/layers.h"

#include <ATen/ATen.h>

namespace hawada::layers {
namespace {

// Sum over the last dimension divided by the number of kept channels: the channel count without a
// hidden gate, the gate's sum with one. The same formula in both cases keeps gates-at-1 bit-identical.
at::Tensor kept_mean(const at::Tensor& x, const at::Tensor& hidden_gate) {
  at::Tensor s = x.sum(-1, /*keepdim=*/true);
  return hidden_gate.defined() ? s / hidden_gate.sum().to(at::kFloat) : s / static_cast<double>(x.size(-1));
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (weight.scalar_type() == x.scalar_type()) return at::linear(x, weight, bias);
  return at::linear(x.to(weight.scalar_type()), weight, bias).to(x.scalar_type());
}

at::Tensor embedding(const at::Tensor& table, const at::Tensor& ids, at::ScalarType dtype) {
  return at::embedding(table, ids).to(dtype);
}

at::Tensor gate_last_dim(const at::Tensor& x, const at::Tensor& gate) {
  return gate.defined() ? x * gate.to(x.scalar_type()) : x;
}

at::Tensor gate_branch(const at::Tensor& branch, const at::Tensor& layer_gate) {
  return layer_gate.defined() ? branch * layer_gate.to(branch.scalar_type()) : branch;
}

at::Tensor gate_block(const at::Tensor& in, const at::Tensor& out, const at::Tensor& layer_gate) {
  if (!layer_gate.defined()) return out;
  const at::Tensor g = layer_gate.to(out.scalar_type());
  return out * g + in * (1 - g);
}

void add_block_influence(const at::Tensor& sum, const at::Tensor& in, const at::Tensor& out) {
  if (!sum.defined()) return;
  const at::Tensor a = in.detach().to(at::kFloat), b = out.detach().to(at::kFloat);
  const at::Tensor cos = (a * b).sum(-1) / (a.norm(2, -1) * b.norm(2, -1)).clamp_min(1e-12);
  const_cast<at::Tensor&>(sum).add_((1 - cos).sum());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& hidden_gate) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor variance = kept_mean(xf.pow(2), hidden_gate);
  const at::Tensor y = weight * (xf * at::rsqrt(variance + eps)).to(x.scalar_type());
  return gate_last_dim(y, hidden_gate);
}

at::Tensor rms_norm_unit_offset(const at::Tensor& x, const at::Tensor& weight, double eps,
                                const at::Tensor& hidden_gate) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor variance = kept_mean(xf.pow(2), hidden_gate);
  const at::Tensor y = (xf * at::rsqrt(variance + eps) * (1.0 + weight.to(at::kFloat))).to(x.scalar_type());
  return gate_last_dim(y, hidden_gate);
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                      const at::Tensor& hidden_gate) {
  const at::Tensor xf = x.to(at::kFloat);
  at::Tensor centered = xf - kept_mean(xf, hidden_gate);
  if (hidden_gate.defined()) centered = centered * hidden_gate.to(at::kFloat);  // pruned channels stay out
  const at::Tensor variance = kept_mean(centered.pow(2), hidden_gate);
  const at::Tensor y =
      (centered * at::rsqrt(variance + eps) * weight.to(at::kFloat) + bias.to(at::kFloat)).to(x.scalar_type());
  return gate_last_dim(y, hidden_gate);
}

}  // namespace hawada::layers
