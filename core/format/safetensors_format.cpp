#include "core/format/safetensors_format.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/json_input.h"

namespace hawada::safetensors {
namespace {

struct DTypeRow {
  DType dtype;
  std::string_view name;
  size_t size;
};
// The one table of dtypes: on-disk name and element size.
constexpr std::array<DTypeRow, 15> kDTypes{{
    {DType::BOOL, "BOOL", 1},
    {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},
    {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::I16, "I16", 2},
    {DType::U16, "U16", 2},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},
    {DType::F32, "F32", 4},
    {DType::I64, "I64", 8},
    {DType::U64, "U64", 8},
    {DType::F64, "F64", 8},
}};

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  throw CheckpointError("safetensors file '" + file + "': " + what);
}
[[noreturn]] void fail_tensor(const std::string& file, const std::string& tensor, const std::string& what) {
  throw CheckpointError("safetensors file '" + file + "': tensor '" + tensor + "': " + what);
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Parses JSON text, refusing duplicate keys at any depth (nlohmann would keep the last silently).
nlohmann::json parse_json_strict(std::string_view text, const std::string& file, const char* what) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) {
      keys.emplace_back();
    } else if (event == E::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == E::key && !keys.empty() && duplicate.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second) duplicate = k;
    }
    return true;
  };
  if (const std::string deep = json_depth_problem(text); !deep.empty()) fail(file, std::string(what) + " " + deep);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {
    fail(file, std::string(what) + " is not valid UTF-8 JSON: " + e.what());
  }
  if (!duplicate.empty()) fail_tensor(file, duplicate, std::string("duplicate name in ") + what);
  return j;
}

uint64_t checked_numel(const std::vector<int64_t>& shape, const std::string& file, const std::string& name) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail_tensor(file, name, "negative dimension in shape " + shape_string(shape));
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n))
      fail_tensor(file, name, "shape " + shape_string(shape) + " overflows 64 bits");
  }
  return n;
}

uint64_t checked_nbytes(const std::vector<int64_t>& shape, DType dtype, const std::string& file,
                        const std::string& name) {
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(checked_numel(shape, file, name), dtype_size(dtype), &bytes))
    fail_tensor(file, name, "byte size of shape " + shape_string(shape) + " overflows 64 bits");
  return bytes;
}

uint64_t json_uint(const nlohmann::json& v, const std::string& file, const std::string& name, const char* field) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    fail_tensor(file, name, std::string(field) + " must hold non-negative integers, got " + json_excerpt(v));
  return v.get<uint64_t>();
}

TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry, const std::string& file) {
  if (!entry.is_object()) fail_tensor(file, name, "entry must be an object, got " + json_excerpt(entry));
  TensorInfo t;
  t.name = name;
  auto it = entry.find("dtype");
  if (it == entry.end() || !it->is_string()) fail_tensor(file, name, "missing string field 'dtype'");
  auto dt = dtype_from_name(it->get_ref<const std::string&>());
  if (!dt) fail_tensor(file, name, "unknown dtype '" + it->get<std::string>() + "'");
  t.dtype = *dt;
  it = entry.find("shape");
  if (it == entry.end() || !it->is_array()) fail_tensor(file, name, "missing array field 'shape'");
  for (const auto& d : *it) {
    uint64_t v = json_uint(d, file, name, "shape");
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail_tensor(file, name, "dimension " + std::to_string(v) + " does not fit int64");
    t.shape.push_back(static_cast<int64_t>(v));
  }
  it = entry.find("data_offsets");
  if (it == entry.end() || !it->is_array() || it->size() != 2)
    fail_tensor(file, name, "'data_offsets' must be an array [begin, end]");
  t.begin = json_uint((*it)[0], file, name, "data_offsets");
  t.end = json_uint((*it)[1], file, name, "data_offsets");
  if (t.end < t.begin)
    fail_tensor(file, name,
                "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] end before begin");
  uint64_t expected = checked_nbytes(t.shape, t.dtype, file, name);
  if (t.nbytes() != expected)
    fail_tensor(file, name,
                "data_offsets span " + std::to_string(t.nbytes()) + " bytes, " + std::string(dtype_name(t.dtype)) +
                    " " + shape_string(t.shape) + " needs " + std::to_string(expected));
  return t;
}

bool plain_file_name(std::string_view s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string_view::npos &&
         s.find('\\') == std::string_view::npos && s.find('\0') == std::string_view::npos;
}

}  // namespace

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& row : kDTypes)
    if (row.name == name) return row.dtype;
  return std::nullopt;
}
std::string_view dtype_name(DType dtype) { return kDTypes[static_cast<size_t>(dtype)].name; }
size_t dtype_size(DType dtype) { return kDTypes[static_cast<size_t>(dtype)].size; }

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

const TensorInfo* Header::find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &tensors[it->second];
}

Header parse_file(const uint8_t* data, uint64_t size, const std::string& file) {
  if (size < 8) fail(file, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];  // little-endian u64
  if (n < 2) fail(file, "header length " + std::to_string(n) + " is too small for a JSON object");
  if (n > kMaxHeaderBytes)
    fail(file, "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderBytes));
  if (n > size - 8)
    fail(file,
         "header length " + std::to_string(n) + " runs past the end of the " + std::to_string(size) + "-byte file");
  std::string_view text(reinterpret_cast<const char*>(data + 8), n);
  if (text.front() != '{') fail(file, "header does not start with '{'");
  nlohmann::json j = parse_json_strict(text, file, "header");
  if (!j.is_object()) fail(file, "header is not a JSON object");

  Header h;
  h.data_offset = 8 + n;
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail(file, "__metadata__ must be an object of strings, got " + json_excerpt(value));
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          fail(file, "__metadata__ value for '" + mk + "' must be a string, got " + json_excerpt(mv));
        h.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(parse_entry(key, value, file));
  }
  // Contiguity: sorted by offset, each tensor begins where the previous ended, the first at 0, and
  // the last ends exactly at the end of the file.
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const uint64_t data_bytes = size - h.data_offset;
  uint64_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin != cursor) {
      std::string where = prev ? "after tensor '" + prev->name + "' ends at " + std::to_string(cursor)
                               : "the first tensor must begin at 0";
      fail_tensor(
          file, t.name,
          (t.begin > cursor ? "gap: begins at " : "overlap: begins at ") + std::to_string(t.begin) + ", " + where);
    }
    if (t.end > data_bytes)
      fail_tensor(file, t.name,
                  "data_offsets end " + std::to_string(t.end) + " is past the end of the file (" +
                      std::to_string(data_bytes) + " data bytes)");
    cursor = t.end;
    prev = &t;
  }
  if (cursor != data_bytes)
    fail(file, std::to_string(data_bytes - cursor) + " trailing bytes after the last tensor" +
                   (prev ? " '" + prev->name + "'" : std::string()));
  for (size_t i = 0; i < h.tensors.size(); ++i) h.by_name_.emplace(h.tensors[i].name, i);
  return h;
}

uint64_t Layout::file_size() const { return prefix_and_header.size() + (tensors.empty() ? 0 : tensors.back().end); }

Layout build_layout(std::vector<TensorSpec> specs, const std::map<std::string, std::string>& metadata,
                    const std::string& file) {
  std::stable_sort(specs.begin(), specs.end(), [](const TensorSpec& a, const TensorSpec& b) {
    size_t sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  if (metadata.empty()) meta["format"] = "pt";
  for (const auto& [k, v] : metadata) meta[k] = v;
  header["__metadata__"] = meta;
  Layout layout;
  uint64_t cursor = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& s = specs[i];
    if (s.name == "__metadata__") fail_tensor(file, s.name, "reserved name");
    uint64_t bytes = checked_nbytes(s.shape, s.dtype, file, s.name);
    TensorInfo t{s.name, s.dtype, s.shape, cursor, 0};
    if (__builtin_add_overflow(cursor, bytes, &t.end)) fail_tensor(file, s.name, "file size overflows 64 bits");
    cursor = t.end;
    header[s.name] = {{"dtype", dtype_name(s.dtype)}, {"shape", s.shape}, {"data_offsets", {t.begin, t.end}}};
    layout.tensors.push_back(std::move(t));
  }
  std::set<std::string_view> seen;
  for (const auto& t : layout.tensors)
    if (!seen.insert(t.name).second) fail_tensor(file, t.name, "duplicate name");
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t n = text.size();
  layout.prefix_and_header.resize(8);
  for (int i = 0; i < 8; ++i) layout.prefix_and_header[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  layout.prefix_and_header += text;
  return layout;
}

std::vector<std::string> ShardIndex::shard_files() const {
  std::set<std::string> files;
  for (const auto& [name, shard] : weight_map) files.insert(shard);
  return {files.begin(), files.end()};
}

ShardIndex parse_index(std::string_view json_text, const std::string& file) {
  nlohmann::json j = parse_json_strict(json_text, file, "index");
  if (!j.is_object()) fail(file, "index is not a JSON object");
  ShardIndex index;
  if (auto m = j.find("metadata"); m != j.end() && !m->is_null()) {
    if (!m->is_object()) fail(file, "'metadata' must be an object, got " + json_excerpt(*m));
    if (auto ts = m->find("total_size"); ts != m->end()) {
      if (!ts->is_number_integer() || ts->get<int64_t>() < 0)
        fail(file, "'metadata.total_size' must be a non-negative integer, got " + json_excerpt(*ts));
      index.total_size = ts->get<uint64_t>();
    }
  }
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) fail(file, "missing object 'weight_map'");
  for (const auto& [name, shard] : wm->items()) {
    if (!shard.is_string()) fail_tensor(file, name, "weight_map value must be a file name, got " + json_excerpt(shard));
    const auto& s = shard.get_ref<const std::string&>();
    if (!plain_file_name(s))
      fail_tensor(file, name, "shard '" + s + "' is not a plain file name inside the model directory");
    index.weight_map.emplace(name, s);
  }
  return index;
}

std::string index_to_json(const ShardIndex& index) {
  nlohmann::json j;
  j["metadata"] = nlohmann::json::object();
  if (index.total_size) j["metadata"]["total_size"] = *index.total_size;
  j["weight_map"] = index.weight_map;
  return j.dump(2) + "\n";
}

std::string shard_file_name(size_t one_based, size_t count, std::string_view prefix) {
  return fmt::format("{}-{:05}-of-{:05}.safetensors", prefix, one_based, count);
}

std::vector<size_t> plan_shards(const std::vector<uint64_t>& nbytes, uint64_t max_shard_bytes) {
  std::vector<size_t> shard(nbytes.size());
  size_t current = 0;
  uint64_t used = 0;
  bool empty = true;
  for (size_t i = 0; i < nbytes.size(); ++i) {
    if (!empty && (used >= max_shard_bytes || nbytes[i] > max_shard_bytes - used)) {
      ++current;
      used = 0;
      empty = true;
    }
    shard[i] = current;
    used = used + nbytes[i] < used ? UINT64_MAX : used + nbytes[i];
    empty = false;
  }
  return shard;
}

}  // namespace hawada::safetensors
