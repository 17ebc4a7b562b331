// Loading an architecture's weights from a checkpoint, with the checks that make a config/weights
// mismatch an error naming the tensor: missing, wrong shape, or left over.
#pragma once

#include <initializer_list>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "adapters/adapter.h"

namespace hawada {

/// Hands out weights by name and shape; remembers which ones were taken.
class WeightLoader {
 public:
  WeightLoader(const HfCheckpoint& checkpoint, const LoadOptions& options);
  /// The tensor `name` with exactly `shape`, in the compute dtype on the target device (zero-copy
  /// when already so). CheckpointError "tensor 'x' has shape [a, b], config.json implies [c, d]" or
  /// "missing tensor 'x'".
  at::Tensor get(const std::string& name, const std::vector<int64_t>& shape);
  /// Like get(), for a weight used in matrix products (linear, convolution, embedding table): kept in
  /// fp32 when the compute dtype is bf16 on a CPU without native bf16 matrix instructions (AVX512-BF16
  /// or AMX), where LibTorch's bf16 GEMM is several times slower than fp32. The values are bf16-exact,
  /// and layers::linear rounds results back to bf16, so the numerics are those of a bf16 GEMM with fp32
  /// accumulation. Elsewhere identical to get().
  at::Tensor matrix(const std::string& name, const std::vector<int64_t>& shape);
  /// The activation dtype: the requested compute dtype, or the stored dtype of `reference` when none.
  at::ScalarType compute_dtype(const std::string& reference) const;
  /// True when the checkpoint holds `name`.
  bool has(const std::string& name) const;
  /// Marks a tensor as known but unused (e.g. a tied lm_head.weight, a stored rotary inv_freq).
  void ignore(const std::string& name);
  /// CheckpointError listing tensors the architecture did not take (the config does not match them).
  void finish() const;
  /// Every tensor handed out, by name, in the order taken: the model's weights (Model::named_weights).
  const std::vector<std::pair<std::string, at::Tensor>>& loaded() const { return loaded_; }

 private:
  at::Tensor fetch(const std::string& name, const std::vector<int64_t>& shape, std::optional<at::ScalarType> dtype);

  const HfCheckpoint& checkpoint_;
  LoadOptions options_;
  bool matrices_in_fp32_ = false;
  std::set<std::string> taken_;
  std::vector<std::pair<std::string, at::Tensor>> loaded_;
};

}  // namespace hawada
