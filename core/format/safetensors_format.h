// The safetensors file format without LibTorch: dtypes, header parsing with every validation rule of
// DESIGN.md ("Safetensors reading: what is refused"), header building for the writer, and the
// sharded index (model.safetensors.index.json). Kept torch-free so the fuzzer and tools link it alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace hawada::safetensors {

/// Element types of the format (the names are the on-disk spelling).
enum class DType : uint8_t { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64 };

/// "F32" -> DType::F32; nullopt for names the format (or this reader) does not know.
std::optional<DType> dtype_from_name(std::string_view name);
/// DType::F32 -> "F32".
std::string_view dtype_name(DType dtype);
/// Bytes per element.
size_t dtype_size(DType dtype);

/// Largest header the reader accepts, as in the reference implementation.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

/// One tensor entry; offsets are relative to the first byte after the header.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
  uint64_t numel() const;
};

/// A validated header: tensors sorted by offset, the data section starting at data_offset.
struct Header {
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> tensors;
  uint64_t data_offset = 0;
  /// nullptr when absent.
  const TensorInfo* find(std::string_view name) const;

 private:
  friend Header parse_file(const uint8_t*, uint64_t, const std::string&);
  std::unordered_map<std::string, size_t> by_name_;
};

/// Validates a whole safetensors file held in memory (`size` is the file size) and returns its
/// header. Throws CheckpointError naming `file` (and the tensor, for tensor-level rules).
Header parse_file(const uint8_t* data, uint64_t size, const std::string& file);

/// What the writer needs to know of a tensor to lay out the file.
struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};

/// A file layout: the 8-byte length prefix and header (padded with spaces to a multiple of 8), and
/// the tensors in the order their bytes follow. Order: larger element size first, then by name, so
/// every tensor starts aligned to its element size; the same inputs always give the same bytes.
struct Layout {
  std::string prefix_and_header;
  std::vector<TensorInfo> tensors;
  uint64_t file_size() const;
};

/// Builds the layout for `specs`; metadata defaults to {"format": "pt"} when empty.
/// Throws CheckpointError on duplicate names, negative dims or byte-size overflow.
Layout build_layout(std::vector<TensorSpec> specs, const std::map<std::string, std::string>& metadata,
                    const std::string& file);

/// A parsed model.safetensors.index.json.
struct ShardIndex {
  std::optional<uint64_t> total_size;
  std::map<std::string, std::string> weight_map;  ///< tensor name -> shard file name
  /// Shard file names in first-seen sorted order (each once).
  std::vector<std::string> shard_files() const;
};

/// Parses and validates an index: an object with a "weight_map" object of strings; shard names
/// must be plain file names inside the model directory (no separators, "." or ".."; not absolute).
ShardIndex parse_index(std::string_view json_text, const std::string& file);

/// Serialises an index the way transformers writes it (sorted keys, 2-space indent).
std::string index_to_json(const ShardIndex& index);

/// "model-00002-of-00005.safetensors" for shard 2 of 5 (1-based), transformers' naming.
std::string shard_file_name(size_t one_based, size_t count, std::string_view prefix = "model");

/// Greedy split of tensors (given sizes, in the order they will be written) into shards of at most
/// max_shard_bytes; a tensor larger than the limit gets a shard of its own (transformers' rule).
/// Returns, per tensor, its 0-based shard number.
std::vector<size_t> plan_shards(const std::vector<uint64_t>& nbytes, uint64_t max_shard_bytes);

}  // namespace hawada::safetensors
