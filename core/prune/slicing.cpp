#include "core/prune/slicing.h"

#include <ATen/ATen.h>

#include "core/base/errors.h"

namespace hawada {

at::Tensor index_tensor(const std::vector<int64_t>& indices) {
  return at::tensor(indices, at::TensorOptions().dtype(at::kLong));
}

std::vector<int64_t> expand_indices(const std::vector<int64_t>& indices, int64_t width) {
  std::vector<int64_t> out;
  out.reserve(indices.size() * static_cast<size_t>(width));
  for (int64_t i : indices)
    for (int64_t k = 0; k < width; ++k) out.push_back(i * width + k);
  return out;
}

at::Tensor slice_dim(const at::Tensor& t, int64_t dim, const std::vector<int64_t>& indices) {
  if (indices.empty()) return t.contiguous();
  const int64_t n = t.size(dim);
  for (int64_t i : indices) HAWADA_ASSERT(i >= 0 && i < n, "slice index within the dimension");
  if (static_cast<int64_t>(indices.size()) == n) {
    bool identity = true;
    for (int64_t i = 0; i < n && identity; ++i) identity = indices[static_cast<size_t>(i)] == i;
    if (identity) return t.contiguous();
  }
  return t.index_select(dim, index_tensor(indices).to(t.device())).contiguous();
}

at::Tensor slice_linear(const at::Tensor& weight, const std::vector<int64_t>& rows, const std::vector<int64_t>& cols,
                        const at::Tensor& col_scale, const at::Tensor& row_scale) {
  HAWADA_ASSERT(weight.dim() == 2, "a Linear weight is 2-D");
  at::Tensor w = slice_dim(slice_dim(weight, 0, rows), 1, cols);
  if (!col_scale.defined() && !row_scale.defined()) return w;
  // Both folds in fp32, rounded once to the stored dtype.
  at::Tensor f = w.to(at::kFloat);
  if (col_scale.defined()) {
    HAWADA_ASSERT(col_scale.dim() == 1 && col_scale.size(0) == w.size(1), "one scale per kept column");
    f = f * col_scale.to(w.device()).to(at::kFloat).unsqueeze(0);
  }
  if (row_scale.defined()) {
    HAWADA_ASSERT(row_scale.dim() == 1 && row_scale.size(0) == w.size(0), "one scale per kept row");
    f = f * row_scale.to(w.device()).to(at::kFloat).unsqueeze(1);
  }
  return f.to(weight.scalar_type()).contiguous();
}

at::Tensor slice_vector(const at::Tensor& v, const std::vector<int64_t>& indices, const at::Tensor& scale) {
  at::Tensor s = slice_dim(v, 0, indices);
  if (!scale.defined()) return s;
  HAWADA_ASSERT(scale.dim() == 1 && scale.size(0) == s.size(0), "one scale per kept entry");
  return (s.to(at::kFloat) * scale.to(s.device()).to(at::kFloat)).to(v.scalar_type()).contiguous();
}

at::Tensor slice_embedding(const at::Tensor& table, const std::vector<int64_t>& channels) {
  HAWADA_ASSERT(table.dim() == 2, "an embedding table is 2-D");
  return slice_dim(table, 1, channels);
}

at::Tensor slice_norm(const at::Tensor& weight, const std::vector<int64_t>& channels) {
  return slice_dim(weight, weight.dim() - 1, channels);
}

}  // namespace hawada
