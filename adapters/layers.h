// Functional building blocks shared by the adapters, written to match transformers' numerics and to
// take gates. Norms accept an optional hidden gate: statistics are taken over the kept channels only
// (sum over channels / sum of the gate), and the output is multiplied by the gate, so a model sliced
// to the kept channels computes the same values as the hard-gated one.
#pragma once

#include <ATen/core/Tensor.h>

namespace hawada::layers {

/// LlamaRMSNorm: in fp32, x * rsqrt(mean(x^2) + eps), cast back, times weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& hidden_gate);
/// Gemma3RMSNorm: in fp32, x * rsqrt(mean(x^2) + eps) * (1 + weight), cast back.
at::Tensor rms_norm_unit_offset(const at::Tensor& x, const at::Tensor& weight, double eps,
                                const at::Tensor& hidden_gate);
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

/// A pre-norm block's residual branch times its layer gate (a 0-dim tensor; undefined: the branch
/// itself). A gate of 0 leaves the residual stream as it was, of 1 adds the branch bit for bit.
at::Tensor gate_branch(const at::Tensor& branch, const at::Tensor& layer_gate);
/// A post-norm block: g x out + (1 - g) x in (undefined gate: out itself; exact at 0 and 1).
at::Tensor gate_block(const at::Tensor& in, const at::Tensor& out, const at::Tensor& layer_gate);
/// Adds the block influence of one block (ShortGPT's: 1 - cos(input, output) of every token, summed) to
/// the 0-dim fp32 `sum`; nothing when `sum` is undefined.
void add_block_influence(const at::Tensor& sum, const at::Tensor& in, const at::Tensor& out);

}  // namespace hawada::layers
