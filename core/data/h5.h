// A thin HDF5 wrapper: each C call is wrapped once and checked (HAWADA_CHECK_H5 throws with HDF5's
// own error stack, file:line, rank and host), handles are RAII, and datasets are read and written
// by rows of their first dimension. HDF5's automatic error printing is off: errors travel as exceptions.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/base/errors.h"

namespace hawada {
namespace detail {
[[noreturn]] void throw_h5_error(const char* call, const char* file, int line);
}
}  // namespace hawada

/// Checks an HDF5 call (negative return = failure); throws IoError with HDF5's error stack.
#define HAWADA_CHECK_H5(call)                                                           \
  ([&]() {                                                                              \
    auto hawada_h5_rc_ = (call);                                                        \
    if (hawada_h5_rc_ < 0) ::hawada::detail::throw_h5_error(#call, __FILE__, __LINE__); \
    return hawada_h5_rc_;                                                               \
  }())

namespace hawada::h5 {

/// Element types the pipeline stores. bf16 has no HDF5 type: it is stored as its raw uint16 bits.
enum class Type { u8, u16, u32, i32, i64, f16, f32, f64 };

/// What a dataset holds on disk.
struct DatasetInfo {
  std::vector<int64_t> shape;
  bool is_integer = false;
  bool is_float = false;
  bool is_signed = false;
  size_t element_size = 0;
  /// "int32", "uint16", "float32", ... for messages.
  std::string type_name() const;
};

/// True when this HDF5 library serialises calls from several threads itself (built thread-safe), so
/// one thread may write a file while another reads another.
bool library_threadsafe();

/// An HDF5 identifier closed on destruction.
class Id {
 public:
  Id() = default;
  Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Id(Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Id& operator=(Id&& o) noexcept;
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  ~Id();
  hid_t get() const { return id_; }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

/// An open HDF5 file.
class File {
 public:
  /// Opens for reading; IoError naming the file when it is not an HDF5 file.
  static File open_read(const std::filesystem::path& path);
  /// Creates (truncates) a file for writing.
  static File create(const std::filesystem::path& path);
  const std::filesystem::path& path() const { return path_; }

  bool has(const std::string& dataset) const;
  /// Shape and element type; IoError naming the file and dataset when absent or not a dataset.
  DatasetInfo info(const std::string& dataset) const;
  /// IoError naming the file and dataset when the dataset's bytes do not all live in this file or
  /// cannot be read here: an external link, a virtual dataset, external raw storage (all of which a
  /// fingerprint of this file would not see change), a compression filter this HDF5 lacks, or less
  /// storage than the declared size (a truncated or sparse dataset).
  void check_self_contained(const std::string& dataset) const;
  /// Reads rows [row, row + rows) of the first dimension, converted by HDF5 to `type`, into `out`.
  void read_rows(const std::string& dataset, int64_t row, int64_t rows, Type type, void* out) const;
  /// Reads the whole dataset.
  void read_all(const std::string& dataset, Type type, void* out) const;
  /// Creates a dataset of `shape` and writes `data` (row-major, `type`) into it.
  void write(const std::string& dataset, Type type, const std::vector<int64_t>& shape, const void* data);
  void set_attribute(const std::string& name, const std::string& value);
  void set_attribute(const std::string& name, int64_t value);
  /// Root-group attributes; IoError naming the file and attribute when absent or mistyped.
  std::string string_attribute(const std::string& name) const;
  int64_t int_attribute(const std::string& name) const;
  /// Flushes and closes (also done by the destructor, where errors cannot be reported).
  void close();

 private:
  DatasetInfo info_unchecked(const std::string& dataset) const;
  void read_rows_unchecked(const std::string& dataset, int64_t row, int64_t rows, Type type, void* out) const;
  void write_unchecked(const std::string& dataset, Type type, const std::vector<int64_t>& shape, const void* data);
  std::filesystem::path path_;
  Id file_;
};

}  // namespace hawada::h5
