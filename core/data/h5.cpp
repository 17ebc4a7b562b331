#include "core/data/h5.h"

#include <cstring>
#include <mutex>

#include "core/base/process.h"

namespace hawada {
namespace detail {

void throw_h5_error(const char* call, const char* file, int line) {
  // The outermost three messages say what HDF5 was doing; the system's reason (a full disk, a lost mount) sits
  // deep in the stack, in the file driver's "errno = 28, error message = 'No space left on device'".
  struct Walk {
    std::string stack, system;
  } walk;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned n, const H5E_error2_t* e, void* out) -> herr_t {
        auto& w = *static_cast<Walk*>(out);
        const std::string desc = e->desc ? e->desc : "";
        if (n < 3) w.stack += std::string(w.stack.empty() ? "" : "; ") + desc + " (" + e->func_name + ")";
        const std::string tag = "error message = '";
        const size_t at = desc.find(tag);
        if (at != std::string::npos && w.system.empty()) {
          const size_t end = desc.find('\'', at + tag.size());
          w.system = desc.substr(at + tag.size(), end == std::string::npos ? std::string::npos : end - at - tag.size());
        }
        return 0;
      },
      &walk);
  H5Eclear2(H5E_DEFAULT);
  throw IoError("HDF5 call " + std::string(call) + " failed at " + where(file, line) + " on " + process_label() + ": " +
                (walk.stack.empty() ? "no HDF5 error message" : walk.stack) +
                (walk.system.empty() ? "" : ": " + walk.system));
}

}  // namespace detail

namespace h5 {

bool library_threadsafe() {
  hbool_t yes = 0;
  return H5is_library_threadsafe(&yes) >= 0 && yes;
}

namespace {

void silence_hdf5() {
  // Per thread: a thread-safe HDF5 keeps one error stack (and its printing switch) per thread.
  thread_local bool silenced = false;
  if (!silenced) H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr), silenced = true;
}

hid_t native(Type t) {
  switch (t) {
    case Type::u8:
      return H5T_NATIVE_UINT8;
    case Type::u16:
      return H5T_NATIVE_UINT16;
    case Type::u32:
      return H5T_NATIVE_UINT32;
    case Type::i32:
      return H5T_NATIVE_INT32;
    case Type::i64:
      return H5T_NATIVE_INT64;
    case Type::f32:
      return H5T_NATIVE_FLOAT;
    case Type::f64:
      return H5T_NATIVE_DOUBLE;
    case Type::f16:
      break;
  }
  return -1;
}

// IEEE half precision: HDF5 1.10 has no predefined type; this layout is what h5py reads as float16.
Id half_type() {
  Id t(HAWADA_CHECK_H5(H5Tcopy(H5T_IEEE_F32LE)), H5Tclose);
  HAWADA_CHECK_H5(H5Tset_fields(t.get(), 15, 10, 5, 0, 10));
  HAWADA_CHECK_H5(H5Tset_size(t.get(), 2));
  HAWADA_CHECK_H5(H5Tset_ebias(t.get(), 15));
  return t;
}

// A type id usable for both file and memory (owned when it had to be built).
struct TypeRef {
  Id owned;
  hid_t id;
};
TypeRef type_ref(Type t) {
  if (t == Type::f16) {
    Id h = half_type();
    hid_t id = h.get();
    return {std::move(h), id};
  }
  return {Id(), native(t)};
}

}  // namespace

Id& Id::operator=(Id&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0 && close_) close_(id_);
    id_ = o.id_;
    close_ = o.close_;
    o.id_ = -1;
  }
  return *this;
}

Id::~Id() {
  if (id_ >= 0 && close_) close_(id_);
}

std::string DatasetInfo::type_name() const {
  std::string bits = std::to_string(element_size * 8);
  if (is_float) return "float" + bits;
  if (is_integer) return (is_signed ? "int" : "uint") + bits;
  return "non-numeric (" + bits + "-bit)";
}

File File::open_read(const std::filesystem::path& path) {
  silence_hdf5();
  File f;
  f.path_ = path;
  if (!std::filesystem::is_regular_file(path)) throw IoError("'" + path.string() + "' does not exist");
  if (H5Fis_hdf5(path.c_str()) <= 0) throw IoError("'" + path.string() + "' is not an HDF5 file");
  f.file_ = with_context("'" + path.string() + "': ", [&] {
    return Id(HAWADA_CHECK_H5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT)), H5Fclose);
  });
  return f;
}

File File::create(const std::filesystem::path& path) {
  silence_hdf5();
  File f;
  f.path_ = path;
  f.file_ = with_context("'" + path.string() + "': ", [&] {
    return Id(HAWADA_CHECK_H5(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)), H5Fclose);
  });
  return f;
}

bool File::has(const std::string& dataset) const { return H5Lexists(file_.get(), dataset.c_str(), H5P_DEFAULT) > 0; }

DatasetInfo File::info(const std::string& dataset) const {
  if (!has(dataset)) throw IoError("'" + path_.string() + "' has no dataset '" + dataset + "'");
  return with_context("'" + path_.string() + "', dataset '" + dataset + "': ", [&] { return info_unchecked(dataset); });
}

DatasetInfo File::info_unchecked(const std::string& dataset) const {
  H5O_info_t oinfo{};
  HAWADA_CHECK_H5(H5Oget_info_by_name2(file_.get(), dataset.c_str(), &oinfo, H5O_INFO_BASIC, H5P_DEFAULT));
  if (oinfo.type != H5O_TYPE_DATASET)
    throw IoError(std::string("is a ") + (oinfo.type == H5O_TYPE_GROUP ? "group" : "named type or other object") +
                  ", not a dataset");
  Id d(HAWADA_CHECK_H5(H5Dopen2(file_.get(), dataset.c_str(), H5P_DEFAULT)), H5Dclose);
  Id space(HAWADA_CHECK_H5(H5Dget_space(d.get())), H5Sclose);
  Id type(HAWADA_CHECK_H5(H5Dget_type(d.get())), H5Tclose);
  DatasetInfo info;
  const int rank = HAWADA_CHECK_H5(H5Sget_simple_extent_ndims(space.get()));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  HAWADA_CHECK_H5(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr));
  for (hsize_t d_ : dims) info.shape.push_back(static_cast<int64_t>(d_));
  const H5T_class_t cls = H5Tget_class(type.get());
  info.is_integer = cls == H5T_INTEGER;
  info.is_float = cls == H5T_FLOAT;
  info.is_signed = info.is_integer ? H5Tget_sign(type.get()) == H5T_SGN_2 : info.is_float;
  info.element_size = H5Tget_size(type.get());
  return info;
}

void File::check_self_contained(const std::string& dataset) const {
  const std::string where = "'" + path_.string() + "', dataset '" + dataset + "': ";
  H5L_info_t link{};
  HAWADA_CHECK_H5(H5Lget_info(file_.get(), dataset.c_str(), &link, H5P_DEFAULT));
  if (link.type == H5L_TYPE_EXTERNAL)
    throw IoError(where +
                  "is an external link to another file; the data must live in this file (its fingerprint "
                  "would not see the other file change): copy it in, e.g. h5copy or h5py");
  const DatasetInfo meta = info(dataset);
  Id d(HAWADA_CHECK_H5(H5Dopen2(file_.get(), dataset.c_str(), H5P_DEFAULT)), H5Dclose);
  Id dcpl(HAWADA_CHECK_H5(H5Dget_create_plist(d.get())), H5Pclose);
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  if (layout == H5D_VIRTUAL)
    throw IoError(where +
                  "is a virtual dataset (its bytes live in other files, which the fingerprint would not "
                  "see change); write a self-contained copy, e.g. h5repack");
  if (HAWADA_CHECK_H5(H5Pget_external_count(dcpl.get())) > 0)
    throw IoError(where +
                  "keeps its raw data in external files (which the fingerprint would not see change); "
                  "write a self-contained copy, e.g. h5repack");
  const int filters = HAWADA_CHECK_H5(H5Pget_nfilters(dcpl.get()));
  for (int i = 0; i < filters; ++i) {
    unsigned flags = 0, config = 0;
    size_t nvalues = 0;
    char name[128] = {0};
    const H5Z_filter_t id =
        H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &nvalues, nullptr, sizeof name, name, &config);
    if (id < 0 || H5Zfilter_avail(id) <= 0)
      throw IoError(where + "is compressed with filter " + std::to_string(id) + " ('" + name +
                    "'), which this HDF5 library does not have (lzf is h5py's own); rewrite it with gzip, e.g. "
                    "h5repack -f GZIP=4 in.h5 out.h5");
  }
  uint64_t declared = meta.element_size;
  for (int64_t n : meta.shape)
    declared =
        n == 0 ? 0
               : (declared > UINT64_MAX / static_cast<uint64_t>(n) ? UINT64_MAX : declared * static_cast<uint64_t>(n));
  const uint64_t stored = H5Dget_storage_size(d.get());
  // Compression shrinks data by small factors; far less storage than declared is a truncated or sparse
  // dataset whose rows were never written (or a file built to make readers allocate).
  const uint64_t plausible = filters > 0 ? declared / 1000 : declared;
  if (declared > 0 && stored < plausible)
    throw IoError(where + "declares " + std::to_string(declared) + " bytes of data but stores " +
                  std::to_string(stored) + (filters > 0 ? " compressed" : "") +
                  ": the file is truncated or the dataset was never fully written");
}

void File::read_rows(const std::string& dataset, int64_t row, int64_t rows, Type type, void* out) const {
  with_context("'" + path_.string() + "', dataset '" + dataset + "': ",
               [&] { read_rows_unchecked(dataset, row, rows, type, out); });
}

void File::read_rows_unchecked(const std::string& dataset, int64_t row, int64_t rows, Type type, void* out) const {
  const DatasetInfo meta = info_unchecked(dataset);
  HAWADA_ASSERT(!meta.shape.empty() && row >= 0 && row + rows <= meta.shape[0], "row range inside the dataset");
  Id d(HAWADA_CHECK_H5(H5Dopen2(file_.get(), dataset.c_str(), H5P_DEFAULT)), H5Dclose);
  Id file_space(HAWADA_CHECK_H5(H5Dget_space(d.get())), H5Sclose);
  std::vector<hsize_t> start(meta.shape.size(), 0), count(meta.shape.begin(), meta.shape.end());
  start[0] = static_cast<hsize_t>(row);
  count[0] = static_cast<hsize_t>(rows);
  HAWADA_CHECK_H5(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr));
  Id mem_space(HAWADA_CHECK_H5(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr)), H5Sclose);
  TypeRef t = type_ref(type);
  HAWADA_CHECK_H5(H5Dread(d.get(), t.id, mem_space.get(), file_space.get(), H5P_DEFAULT, out));
}

void File::read_all(const std::string& dataset, Type type, void* out) const {
  const DatasetInfo meta = info(dataset);
  if (meta.shape.empty() || meta.shape[0] == 0) {
    Id d(HAWADA_CHECK_H5(H5Dopen2(file_.get(), dataset.c_str(), H5P_DEFAULT)), H5Dclose);
    TypeRef t = type_ref(type);
    if (meta.shape.empty()) HAWADA_CHECK_H5(H5Dread(d.get(), t.id, H5S_ALL, H5S_ALL, H5P_DEFAULT, out));
    return;
  }
  read_rows(dataset, 0, meta.shape[0], type, out);
}

void File::write(const std::string& dataset, Type type, const std::vector<int64_t>& shape, const void* data) {
  with_context("'" + path_.string() + "', dataset '" + dataset + "': ",
               [&] { write_unchecked(dataset, type, shape, data); });
}

void File::write_unchecked(const std::string& dataset, Type type, const std::vector<int64_t>& shape, const void* data) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Id space(HAWADA_CHECK_H5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)), H5Sclose);
  TypeRef t = type_ref(type);
  Id d(HAWADA_CHECK_H5(
           H5Dcreate2(file_.get(), dataset.c_str(), t.id, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)),
       H5Dclose);
  HAWADA_CHECK_H5(H5Dwrite(d.get(), t.id, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
}

void File::set_attribute(const std::string& name, const std::string& value) {
  Id type(HAWADA_CHECK_H5(H5Tcopy(H5T_C_S1)), H5Tclose);
  HAWADA_CHECK_H5(H5Tset_size(type.get(), value.size() + 1));
  HAWADA_CHECK_H5(H5Tset_strpad(type.get(), H5T_STR_NULLTERM));
  Id space(HAWADA_CHECK_H5(H5Screate(H5S_SCALAR)), H5Sclose);
  Id a(HAWADA_CHECK_H5(H5Acreate2(file_.get(), name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT)),
       H5Aclose);
  HAWADA_CHECK_H5(H5Awrite(a.get(), type.get(), value.c_str()));
}

void File::set_attribute(const std::string& name, int64_t value) {
  Id space(HAWADA_CHECK_H5(H5Screate(H5S_SCALAR)), H5Sclose);
  Id a(HAWADA_CHECK_H5(H5Acreate2(file_.get(), name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT)),
       H5Aclose);
  HAWADA_CHECK_H5(H5Awrite(a.get(), H5T_NATIVE_INT64, &value));
}

std::string File::string_attribute(const std::string& name) const {
  if (H5Aexists(file_.get(), name.c_str()) <= 0)
    throw IoError("'" + path_.string() + "' has no attribute '" + name + "'");
  Id a(HAWADA_CHECK_H5(H5Aopen(file_.get(), name.c_str(), H5P_DEFAULT)), H5Aclose);
  Id type(HAWADA_CHECK_H5(H5Aget_type(a.get())), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) > 0)
    throw IoError("'" + path_.string() + "': attribute '" + name + "' is not a fixed-length string");
  std::string value(H5Tget_size(type.get()), '\0');
  HAWADA_CHECK_H5(H5Aread(a.get(), type.get(), value.data()));
  value.resize(std::strlen(value.c_str()));
  return value;
}

int64_t File::int_attribute(const std::string& name) const {
  if (H5Aexists(file_.get(), name.c_str()) <= 0)
    throw IoError("'" + path_.string() + "' has no attribute '" + name + "'");
  Id a(HAWADA_CHECK_H5(H5Aopen(file_.get(), name.c_str(), H5P_DEFAULT)), H5Aclose);
  Id type(HAWADA_CHECK_H5(H5Aget_type(a.get())), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER)
    throw IoError("'" + path_.string() + "': attribute '" + name + "' is not an integer");
  int64_t v = 0;
  HAWADA_CHECK_H5(H5Aread(a.get(), H5T_NATIVE_INT64, &v));
  return v;
}

void File::close() {
  if (file_.get() >= 0) {
    with_context("'" + path_.string() + "': ", [&] { HAWADA_CHECK_H5(H5Fflush(file_.get(), H5F_SCOPE_LOCAL)); });
    file_ = Id();
  }
}

}  // namespace h5
}  // namespace hawada
