#include "core/io/safetensors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstring>

#include "core/base/errors.h"
#include "core/base/fs.h"

namespace hawada::safetensors {
namespace {

struct TypeRow {
  DType dtype;
  at::ScalarType type;
};
// Format dtype <-> LibTorch scalar type, one table.
constexpr TypeRow kTypes[] = {
    {DType::BOOL, at::kBool},
    {DType::U8, at::kByte},
    {DType::I8, at::kChar},
    {DType::F8_E5M2, at::kFloat8_e5m2},
    {DType::F8_E4M3, at::kFloat8_e4m3fn},
    {DType::I16, at::kShort},
    {DType::U16, at::kUInt16},
    {DType::F16, at::kHalf},
    {DType::BF16, at::kBFloat16},
    {DType::I32, at::kInt},
    {DType::U32, at::kUInt32},
    {DType::F32, at::kFloat},
    {DType::I64, at::kLong},
    {DType::U64, at::kUInt64},
    {DType::F64, at::kDouble},
};

std::vector<int64_t> to_sizes(const at::Tensor& t) { return {t.sizes().begin(), t.sizes().end()}; }

}  // namespace

at::ScalarType to_scalar_type(DType dtype) {
  for (const auto& row : kTypes)
    if (row.dtype == dtype) return row.type;
  HAWADA_ASSERT(false, "dtype table is incomplete");
  return at::kFloat;
}

DType from_scalar_type(at::ScalarType type, const std::string& tensor_name) {
  for (const auto& row : kTypes)
    if (row.type == type) return row.dtype;
  throw CheckpointError("tensor '" + tensor_name + "': dtype " + std::string(c10::toString(type)) +
                        " cannot be stored in safetensors");
}

Reader::Reader(const std::filesystem::path& path) : mapping_(MappedFile::open(path)) {
  header_ = parse_file(mapping_->data(), mapping_->size(), path.string());
}

const TensorInfo& Reader::info(std::string_view name) const {
  const TensorInfo* t = header_.find(name);
  if (!t) throw CheckpointError("safetensors file '" + path().string() + "': no tensor '" + std::string(name) + "'");
  return *t;
}

at::Tensor Reader::tensor(std::string_view name) const {
  const TensorInfo& t = info(name);
  const auto type = to_scalar_type(t.dtype);
  const auto options = at::TensorOptions().dtype(type).device(at::kCPU);
  // from_blob needs a mutable pointer; the mapping is MAP_PRIVATE so a write only dirties private pages.
  void* p = const_cast<uint8_t*>(bytes(t));
  if (t.nbytes() == 0) return at::empty(t.shape, options);
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(t.dtype) != 0) {
    at::Tensor copy = at::empty(t.shape, options);
    std::memcpy(copy.data_ptr(), p, t.nbytes());
    return copy;
  }
  auto keep = mapping_;
  return at::from_blob(
      p, t.shape, [keep](void*) mutable { keep.reset(); }, options);
}

void write_file(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  std::map<std::string, at::Tensor> by_name;
  for (const auto& nt : tensors) {
    at::Tensor t = nt.tensor.device().is_cpu() ? nt.tensor : nt.tensor.cpu();
    specs.push_back({nt.name, from_scalar_type(t.scalar_type(), nt.name), to_sizes(t)});
    by_name[nt.name] = t.contiguous();
  }
  Layout layout = build_layout(std::move(specs), metadata, path.string());
  atomic_write(path, [&](OutputFile& out) {
    out.write(layout.prefix_and_header.data(), layout.prefix_and_header.size());
    for (const auto& info : layout.tensors) {
      const at::Tensor& t = by_name.at(info.name);
      if (info.nbytes()) out.write(t.data_ptr(), info.nbytes());
    }
  });
}

void write_sharded_weights(const std::filesystem::path& dir, const std::vector<NamedTensor>& tensors,
                           const std::vector<size_t>& shard_of, const std::vector<std::string>& file_names) {
  HAWADA_ASSERT(shard_of.size() == tensors.size(), "one shard number per tensor");
  std::vector<std::vector<NamedTensor>> shards(file_names.size());
  ShardIndex index;
  uint64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    HAWADA_ASSERT(shard_of[i] < file_names.size(), "shard number out of range");
    shards[shard_of[i]].push_back(tensors[i]);
    index.weight_map[tensors[i].name] = file_names[shard_of[i]];
    total += static_cast<uint64_t>(tensors[i].tensor.numel()) * tensors[i].tensor.element_size();
  }
  index.total_size = total;
  for (size_t s = 0; s < file_names.size(); ++s) write_file(dir / file_names[s], shards[s]);
  // The index goes last: a reader never sees an index naming a shard that is not there yet.
  atomic_write_text(dir / "model.safetensors.index.json", index_to_json(index));
}

std::vector<std::string> write_model_weights(const std::filesystem::path& dir, const std::vector<NamedTensor>& tensors,
                                             uint64_t max_shard_bytes, bool force_index) {
  std::vector<uint64_t> sizes;
  sizes.reserve(tensors.size());
  for (const auto& nt : tensors) sizes.push_back(static_cast<uint64_t>(nt.tensor.numel()) * nt.tensor.element_size());
  const std::vector<size_t> shard_of = plan_shards(sizes, max_shard_bytes);
  const size_t count = shard_of.empty() ? 1 : shard_of.back() + 1;
  if (count == 1 && !force_index) {
    write_file(dir / "model.safetensors", tensors);
    return {"model.safetensors"};
  }
  std::vector<std::string> files;
  for (size_t s = 0; s < count; ++s) files.push_back(shard_file_name(s + 1, count));
  write_sharded_weights(dir, tensors, shard_of, files);
  files.push_back("model.safetensors.index.json");
  return files;
}

}  // namespace hawada::safetensors
