// Loading an architecture's weights from a checkpoint, with the checks that make a config/weights
// mismatch an error naming the tensor: missing, wrong shape, or left over.
#pragma once

#include <initializer_list>
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
  /// Like get() when `present` (the config says the tensor exists), else an undefined tensor.
  at::Tensor get_if(bool present, const std::string& name, const std::vector<int64_t>& shape);
  /// True when the checkpoint holds `name`.
  bool has(const std::string& name) const;
  /// Marks a tensor as known but unused (e.g. a tied lm_head.weight, a stored rotary inv_freq).
  void ignore(const std::string& name);
  /// CheckpointError listing tensors the architecture did not take (the config does not match them).
  void finish() const;

 private:
  const HfCheckpoint& checkpoint_;
  LoadOptions options_;
  std::set<std::string> taken_;
};

/// "model.layers.%d.mlp.up_proj.weight" with %d replaced by layer.
std::string layer_name(const char* pattern, int64_t layer);

}  // namespace hawada
