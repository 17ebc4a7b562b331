// A Hugging Face model directory: config.json, weights (one safetensors file or shards with an
// index), and the side files (tokenizer, preprocessor, generation config) that an export copies.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/io/safetensors.h"

namespace hawada {

/// An opened, validated model directory. Weight files are memory-mapped; tensors come without copies.
class HfCheckpoint {
 public:
  /// Opens `dir`: parses config.json, maps every weight file and checks that the index and the
  /// shards agree (every indexed tensor is in its shard, no shard holds an unindexed or duplicate
  /// tensor). Pickle-only directories are refused with a pointer to safetensors conversion.
  /// Throws CheckpointError/IoError naming the file and tensor.
  static HfCheckpoint open(const std::filesystem::path& dir);
  /// A model held in memory (a pruned or healed student): `config` and contiguous CPU tensors by
  /// Hugging Face name. `label` stands for the directory in messages. It has no weight or side files.
  static HfCheckpoint in_memory(nlohmann::json config, const std::vector<safetensors::NamedTensor>& tensors,
                                const std::filesystem::path& label);

  const std::filesystem::path& dir() const { return dir_; }
  /// config.json as parsed.
  const nlohmann::json& config() const { return config_; }
  /// True when weights come from model.safetensors.index.json and shards.
  bool sharded() const { return sharded_; }
  /// Weight file names (relative to dir), in index order; the index itself is not included.
  const std::vector<std::string>& weight_files() const { return weight_files_; }
  /// Side files to copy on export (tokenizer, preprocessor, generation config, chat template).
  const std::vector<std::string>& side_files() const { return side_files_; }
  /// Every tensor name, sorted.
  std::vector<std::string> tensor_names() const;
  bool contains(std::string_view name) const { return where_.count(std::string(name)) != 0; }
  /// Header entry of a tensor; CheckpointError naming the directory and tensor when absent.
  const safetensors::TensorInfo& info(std::string_view name) const;
  /// The tensor in its stored dtype, zero-copy over the mapping.
  at::Tensor tensor(std::string_view name) const;
  /// Index into weight_files() of the file holding `name`.
  size_t where_file(std::string_view name) const;
  /// The tensor's stored bytes inside the mapping (info(name).nbytes() of them).
  const uint8_t* bytes(std::string_view name) const;
  /// Sum of the stored tensors' element counts and bytes.
  uint64_t total_numel() const;
  uint64_t total_bytes() const;

 private:
  std::filesystem::path dir_;
  nlohmann::json config_;
  bool sharded_ = false;
  std::vector<std::string> weight_files_;
  std::vector<std::string> side_files_;
  std::vector<std::shared_ptr<safetensors::Reader>> readers_;
  std::map<std::string, size_t> where_;  // tensor name -> reader (or index into memory_)
  // In-memory checkpoints: the tensors and their header entries (readers_ is then empty).
  std::vector<at::Tensor> memory_;
  std::vector<safetensors::TensorInfo> memory_info_;
};

/// Keep-all export: a new model directory whose tensors are byte-identical to `source`'s, with
/// config.json and the side files copied unchanged. Sharded like the source unless max_shard_bytes
/// is given (then split at that size, single file when everything fits). Published atomically;
/// refuses an existing `out_dir`.
void export_keep_all(const HfCheckpoint& source, const std::filesystem::path& out_dir,
                     std::optional<uint64_t> max_shard_bytes = std::nullopt);

/// Parses a JSON file; CheckpointError naming the file on a syntax error.
nlohmann::json read_json_file(const std::filesystem::path& path);

}  // namespace hawada
