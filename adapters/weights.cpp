#include "adapters/weights.h"

#include <cstdio>

#include <ATen/ATen.h>

#include "core/base/cpu_features.h"
#include "core/base/errors.h"
#include "core/io/checkpoint.h"

namespace hawada {
namespace {

std::string shape_string(c10::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

WeightLoader::WeightLoader(const HfCheckpoint& checkpoint, const LoadOptions& options)
    : checkpoint_(checkpoint), options_(options) {
  matrices_in_fp32_ = options.dtype == at::kBFloat16 && options.device.is_cpu() && !cpu_has_native_bf16_matmul();
}

at::ScalarType WeightLoader::compute_dtype(const std::string& reference) const {
  if (options_.dtype) return *options_.dtype;
  return safetensors::to_scalar_type(checkpoint_.info(reference).dtype);
}

at::Tensor WeightLoader::matrix(const std::string& name, const std::vector<int64_t>& shape) {
  return fetch(name, shape, matrices_in_fp32_ ? std::optional<at::ScalarType>(at::kFloat) : options_.dtype);
}

bool WeightLoader::has(const std::string& name) const { return checkpoint_.contains(name); }

at::Tensor WeightLoader::get(const std::string& name, const std::vector<int64_t>& shape) {
  return fetch(name, shape, options_.dtype);
}

at::Tensor WeightLoader::fetch(const std::string& name, const std::vector<int64_t>& shape,
                               std::optional<at::ScalarType> wanted) {
  if (!checkpoint_.contains(name))
    throw CheckpointError("model directory '" + checkpoint_.dir().string() + "': missing tensor '" + name +
                          "' with shape " + shape_string(shape) + ", which config.json implies");
  const auto& info = checkpoint_.info(name);
  if (info.shape != shape)
    throw CheckpointError("model directory '" + checkpoint_.dir().string() + "': tensor '" + name + "' has shape " +
                          shape_string(info.shape) + ", config.json implies " + shape_string(shape));
  taken_.insert(name);
  at::Tensor t = checkpoint_.tensor(name);
  // One NaN in a weight makes every output NaN: refuse it here, by name (a pass over the bytes, well
  // under a second per GB).
  if (t.is_floating_point() && !at::isfinite(t).all().item<bool>())
    throw CheckpointError("model directory '" + checkpoint_.dir().string() + "': tensor '" + name +
                          "' holds non-finite values (NaN or infinity)");
  const auto dtype = wanted.value_or(t.scalar_type());
  if (t.scalar_type() != dtype || t.device() != options_.device) t = t.to(options_.device, dtype);
  loaded_.emplace_back(name, t);
  return t;
}

void WeightLoader::ignore(const std::string& name) { taken_.insert(name); }

void WeightLoader::finish() const {
  std::vector<std::string> left;
  for (const auto& name : checkpoint_.tensor_names())
    if (!taken_.count(name)) left.push_back(name);
  if (left.empty()) return;
  std::string list;
  for (size_t i = 0; i < left.size() && i < 5; ++i) list += (i ? ", '" : "'") + left[i] + "'";
  if (left.size() > 5) list += " and " + std::to_string(left.size() - 5) + " more";
  throw CheckpointError("model directory '" + checkpoint_.dir().string() + "': " + std::to_string(left.size()) +
                        " tensor(s) that config.json does not account for: " + list);
}

}  // namespace hawada
