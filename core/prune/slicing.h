// Slicing of weights for a pruned export: keep given rows / columns / channels, optionally folding
// per-column scales (gate values) into the kept columns. Results are contiguous, in the input's
// dtype; a fold is computed in fp32 and rounded once.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace hawada {

/// Indices as an int64 tensor.
at::Tensor index_tensor(const std::vector<int64_t>& indices);
/// Each index i expanded to i*width .. i*width + width - 1 (head -> its channels).
std::vector<int64_t> expand_indices(const std::vector<int64_t>& indices, int64_t width);

/// A Linear weight [out, in]: keep `rows` (output features) and `cols` (input features); an empty
/// list keeps all. `col_scale` / `row_scale` (one value per kept column / row, or undefined) multiply
/// the kept columns / rows.
at::Tensor slice_linear(const at::Tensor& weight, const std::vector<int64_t>& rows, const std::vector<int64_t>& cols,
                        const at::Tensor& col_scale = {}, const at::Tensor& row_scale = {});
/// A vector (a bias) [n]: keep `indices`; `scale` (one per kept entry, or undefined) multiplies them.
at::Tensor slice_vector(const at::Tensor& v, const std::vector<int64_t>& indices, const at::Tensor& scale = {});
/// An embedding table [vocab, hidden]: keep the given hidden channels.
at::Tensor slice_embedding(const at::Tensor& table, const std::vector<int64_t>& channels);
/// A norm's weight or bias [hidden] (or any tensor along its last dimension): keep the given channels.
at::Tensor slice_norm(const at::Tensor& weight, const std::vector<int64_t>& channels);
/// Any tensor along dimension `dim`.
at::Tensor slice_dim(const at::Tensor& t, int64_t dim, const std::vector<int64_t>& indices);

}  // namespace hawada
