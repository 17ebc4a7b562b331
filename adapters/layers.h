// Functional building blocks shared by the adapters, written to match transformers' numerics and to
// take gates. Norms accept an optional hidden gate: statistics are taken over the kept channels only
// (sum over channels / sum of the gate), and the output is multiplied by the gate, so a model sliced
// to the kept channels computes the same values as the hard-gated one.
#pragma once

#include <ATen/core/Tensor.h>

namespace hawada::layers {

/// LlamaRMSNorm: in fp32, x * rsqrt(mean(x^2) + eps), cast back, times weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& hidden_gate);
/// nn.LayerNorm over the last dimension (two-pass, in fp32), times weight plus bias.
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                      const at::Tensor& hidden_gate);
/// x @ weight^T + bias. A weight kept in fp32 for a bf16 activation (WeightLoader::matrix) is applied
/// in fp32 and the result rounded back to the activation dtype.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});
/// Rows of an embedding table, in the activation dtype `dtype`.
at::Tensor embedding(const at::Tensor& table, const at::Tensor& ids, at::ScalarType dtype);
/// x * gate broadcast over the last dimension; x itself when the gate is undefined.
at::Tensor gate_last_dim(const at::Tensor& x, const at::Tensor& gate);

}  // namespace hawada::layers
