// Safetensors files as LibTorch tensors: a memory-mapped reader that hands out tensors without
// copying (each tensor keeps its file mapping alive), and an atomic writer.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/base/fs.h"
#include "core/format/safetensors_format.h"

namespace hawada::safetensors {

/// LibTorch scalar type of a format dtype (every dtype the format defines has one).
at::ScalarType to_scalar_type(DType dtype);
/// Format dtype of a LibTorch scalar type; CheckpointError for types the format cannot hold.
DType from_scalar_type(at::ScalarType type, const std::string& tensor_name);

/// A validated, memory-mapped safetensors file.
class Reader {
 public:
  /// Maps and validates the whole header and layout; CheckpointError/IoError name the file.
  explicit Reader(const std::filesystem::path& path);
  const Header& header() const { return header_; }
  const std::filesystem::path& path() const { return mapping_->path(); }
  /// True when the file holds `name`.
  bool contains(std::string_view name) const { return header_.find(name) != nullptr; }
  /// The entry for `name`; CheckpointError naming file and tensor when absent.
  const TensorInfo& info(std::string_view name) const;
  /// A CPU tensor over the mapped bytes, in the stored dtype, without copying when the bytes are
  /// aligned to the element size (always, for files laid out by transformers or by this writer);
  /// a misaligned tensor is copied. The tensor keeps the mapping alive.
  at::Tensor tensor(std::string_view name) const;
  /// The raw bytes of a tensor inside the mapping.
  const uint8_t* bytes(const TensorInfo& info) const { return mapping_->data() + header_.data_offset + info.begin; }

 private:
  std::shared_ptr<const MappedFile> mapping_;
  Header header_;
};

/// A tensor to be written under a name.
struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

/// Writes `tensors` to `path` atomically (temp file, fsync, rename, directory fsync). Tensors are
/// written from CPU memory (others are copied to CPU), contiguous, in the layout of build_layout.
void write_file(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                const std::map<std::string, std::string>& metadata = {});

/// Writes `tensors` into the shard files `file_names` (tensor i goes to file_names[shard_of[i]]) and
/// then "model.safetensors.index.json" naming them.
void write_sharded_weights(const std::filesystem::path& dir, const std::vector<NamedTensor>& tensors,
                           const std::vector<size_t>& shard_of, const std::vector<std::string>& file_names);

/// Writes a model's weights into `dir` like transformers: one "model.safetensors" when everything
/// fits in max_shard_bytes (and force_index is false), else shards "model-0000i-of-0000n.safetensors"
/// plus "model.safetensors.index.json". Returns the file names written.
std::vector<std::string> write_model_weights(const std::filesystem::path& dir, const std::vector<NamedTensor>& tensors,
                                             uint64_t max_shard_bytes, bool force_index = false);

}  // namespace hawada::safetensors
