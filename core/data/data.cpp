#include "core/data/data.h"

#include <ATen/ATen.h>

#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/data/h5.h"
#include "core/io/checkpoint.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;

std::string shape_string(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

[[noreturn]] void fail(const fs::path& file, const std::string& dataset, const std::string& what) {
  throw DataError("data file '" + file.string() + "'" + (dataset.empty() ? "" : ", dataset '" + dataset + "'") + ": " +
                  what);
}

// Hash of the file's bytes plus the parameters that cut it into samples.
uint64_t hash_file(const fs::path& file, std::initializer_list<int64_t> cut) {
  auto mapping = MappedFile::open(file);
  Hasher h;
  h.update(mapping->data(), mapping->size());
  for (int64_t v : cut) h.update_u64(static_cast<uint64_t>(v));
  return h.digest();
}

void check_ids(const at::Tensor& ids, int64_t vocab, const fs::path& file, const std::string& dataset, int64_t start) {
  if (vocab <= 0 || ids.numel() == 0) return;
  const at::Tensor bad = (ids < 0) | (ids >= vocab);
  if (!bad.any().item<bool>()) return;
  const at::Tensor where = bad.nonzero()[0];
  const int64_t row = where[0].item<int64_t>(), col = where.size(0) > 1 ? where[1].item<int64_t>() : 0;
  fail(file, dataset,
       "sample " + std::to_string(start + row) + ", position " + std::to_string(col) + ": token id " +
           std::to_string(ids.index({row, col}).item<int64_t>()) + " is outside the vocabulary [0, " +
           std::to_string(vocab) + ")");
}

// A data file that is not readable HDF5 is the data's fault: a DataError.
std::unique_ptr<h5::File> open_h5(const fs::path& path) {
  try {
    return std::make_unique<h5::File>(h5::File::open_read(path));
  } catch (const IoError& e) {
    throw DataError(std::string("data file: ") + e.what());
  }
}

// A data set's rows are read lazily, but the sample order and the teacher cache's chunk list are sized by
// the sample count: more samples than this is refused rather than allocated.
constexpr int64_t kMaxSamples = int64_t{1} << 28;

// The dataset must be readable here and live entirely in this file (else the fingerprint of the file's
// bytes would not see the data change): a DataError naming the file and dataset otherwise.
void check_dataset(const h5::File& f, const std::string& dataset) {
  try {
    f.check_self_contained(dataset);
  } catch (const IoError& e) {
    throw DataError(std::string("data file ") + e.what());
  }
}

// A dataset's shape and type, any HDF5 failure (a group where a dataset belongs, a damaged header)
// becoming a DataError naming the file and dataset.
h5::DatasetInfo h5_info(const h5::File& f, const fs::path& file, const std::string& dataset) {
  try {
    return f.info(dataset);
  } catch (const IoError& e) {
    throw DataError(std::string("data file ") + e.what());
  }
}

// Rows of a dataset; a read failure (a truncated or damaged file) is a DataError naming file and dataset.
void read_rows(const h5::File& f, const std::string& dataset, int64_t row, int64_t rows, h5::Type type, void* out) {
  try {
    f.read_rows(dataset, row, rows, type, out);
  } catch (const IoError& e) {
    throw DataError(std::string("data file ") + e.what());
  }
}

int64_t limit(int64_t available, const DataSpec& spec, const std::string& dataset) {
  const int64_t wanted = spec.samples;
  const fs::path& file = spec.path;
  if (available > kMaxSamples)
    fail(file, dataset,
         "declares " + std::to_string(available) + " samples, more than the " + std::to_string(kMaxSamples) +
             " this pipeline handles");
  if (wanted > available)
    fail(file, dataset,
         spec.samples_key + " = " + std::to_string(wanted) + " but the file holds " + std::to_string(available) +
             " samples");
  return wanted > 0 ? wanted : available;
}

class TokensH5 final : public DataSource {
 public:
  TokensH5(const DataSpec& spec, const DataExpectations& expect) : spec_(spec), expect_(expect) {
    file_ = open_h5(spec.path);
    const auto ids = info("input_ids");
    check_dataset(*file_, "input_ids");
    if (!ids.is_integer || ids.shape.size() != 2)
      fail(spec.path, "input_ids",
           "expected integer [samples, seq_len], got " + ids.type_name() + " " + shape_string(ids.shape));
    if (ids.shape[1] != spec.seq_len)
      fail(spec.path, "input_ids",
           "holds sequences of " + std::to_string(ids.shape[1]) + " tokens, data.seq_len is " +
               std::to_string(spec.seq_len));
    if (file_->has("attention_mask")) {
      const auto mask = info("attention_mask");
      if (!mask.is_integer || mask.shape != ids.shape)
        fail(spec.path, "attention_mask",
             "expected integer " + shape_string(ids.shape) + " like input_ids, got " + mask.type_name() + " " +
                 shape_string(mask.shape));
      check_dataset(*file_, "attention_mask");
      has_mask_ = true;
    }
    size_ = limit(ids.shape[0], spec, "input_ids");
  }
  int64_t size() const override { return size_; }
  uint64_t content_hash() const override { return hash_file(spec_.path, {0, spec_.seq_len, size_}); }
  Batch read(int64_t start, int64_t count) const override {
    Batch b;
    b.input_ids = at::empty({count, spec_.seq_len}, at::kLong);
    read_rows(*file_, "input_ids", start, count, h5::Type::i64, b.input_ids.data_ptr());
    check_ids(b.input_ids, expect_.vocab_size, spec_.path, "input_ids", start);
    if (has_mask_) {
      b.attention_mask = at::empty({count, spec_.seq_len}, at::kLong);
      read_rows(*file_, "attention_mask", start, count, h5::Type::i64, b.attention_mask.data_ptr());
    }
    return b;
  }

 private:
  h5::DatasetInfo info(const std::string& dataset) {
    if (!file_->has(dataset)) fail(spec_.path, dataset, "missing");
    return h5_info(*file_, spec_.path, dataset);
  }
  DataSpec spec_;
  DataExpectations expect_;
  std::unique_ptr<h5::File> file_;
  bool has_mask_ = false;
  int64_t size_ = 0;
};

class TokensBin final : public DataSource {
 public:
  TokensBin(const DataSpec& spec, const DataExpectations& expect) : spec_(spec), expect_(expect) {
    if (spec.token_bytes != 2 && spec.token_bytes != 4)
      fail(spec.path, "", "token size must be 2 (uint16) or 4 (uint32) bytes");
    mapping_ = MappedFile::open(spec.path);
    if (mapping_->size() % static_cast<uint64_t>(spec.token_bytes) != 0)
      fail(spec.path, "",
           std::to_string(mapping_->size()) + " bytes is not a whole number of " +
               std::to_string(spec.token_bytes * 8) + "-bit tokens (data.token_dtype)");
    const int64_t tokens = static_cast<int64_t>(mapping_->size() / static_cast<uint64_t>(spec.token_bytes));
    if (tokens < spec.seq_len)
      fail(spec.path, "",
           "holds " + std::to_string(tokens) +
               " tokens, fewer than one window of data.seq_len = " + std::to_string(spec.seq_len));
    size_ = limit(tokens / spec.seq_len, spec, "");
  }
  int64_t size() const override { return size_; }
  uint64_t content_hash() const override { return hash_file(spec_.path, {1, spec_.seq_len, size_, spec_.token_bytes}); }
  Batch read(int64_t start, int64_t count) const override {
    const auto type = spec_.token_bytes == 2 ? at::kUInt16 : at::kUInt32;
    void* p = const_cast<uint8_t*>(mapping_->data()) + start * spec_.seq_len * spec_.token_bytes;
    Batch b;
    b.input_ids = at::from_blob(p, {count, spec_.seq_len}, at::TensorOptions().dtype(type)).to(at::kLong);
    check_ids(b.input_ids, expect_.vocab_size, spec_.path, "", start);
    return b;
  }

 private:
  DataSpec spec_;
  DataExpectations expect_;
  std::shared_ptr<const MappedFile> mapping_;
  int64_t size_ = 0;
};

class ImagesH5 final : public DataSource {
 public:
  ImagesH5(const DataSpec& spec, const DataExpectations& expect, const PixelNormalization& norm)
      : spec_(spec), norm_(norm) {
    file_ = open_h5(spec.path);
    if (!file_->has("pixel_values")) fail(spec.path, "pixel_values", "missing");
    const auto px = h5_info(*file_, spec.path, "pixel_values");
    check_dataset(*file_, "pixel_values");
    const bool u8 = px.is_integer && !px.is_signed && px.element_size == 1;
    if (!(u8 || px.is_float) || px.shape.size() != 4)
      fail(spec.path, "pixel_values",
           "expected uint8 or float [samples, channels, height, width], got " + px.type_name() + " " +
               shape_string(px.shape));
    if (px.shape[1] != expect.channels || px.shape[2] != expect.image_size || px.shape[3] != expect.image_size)
      fail(spec.path, "pixel_values",
           "images are " + shape_string({px.shape[1], px.shape[2], px.shape[3]}) +
               " (channels, height, width), the model expects " +
               shape_string({expect.channels, expect.image_size, expect.image_size}));
    uint8_ = u8;
    shape_ = px.shape;
    size_ = limit(px.shape[0], spec, "pixel_values");
  }
  int64_t size() const override { return size_; }
  uint64_t content_hash() const override { return hash_file(spec_.path, {2, size_}); }
  Batch read(int64_t start, int64_t count) const override {
    Batch b;
    b.pixel_values = at::empty({count, shape_[1], shape_[2], shape_[3]}, at::kFloat);
    read_rows(*file_, "pixel_values", start, count, h5::Type::f32, b.pixel_values.data_ptr());
    if (uint8_) {
      if (norm_.do_rescale) b.pixel_values.mul_(norm_.rescale_factor);
      if (norm_.do_normalize) {
        const int64_t c = shape_[1];
        at::Tensor mean =
            at::tensor(std::vector<double>(norm_.mean.begin(), norm_.mean.begin() + std::min<int64_t>(c, 3)))
                .to(at::kFloat)
                .view({1, -1, 1, 1});
        at::Tensor stdv =
            at::tensor(std::vector<double>(norm_.std.begin(), norm_.std.begin() + std::min<int64_t>(c, 3)))
                .to(at::kFloat)
                .view({1, -1, 1, 1});
        b.pixel_values.sub_(mean).div_(stdv);
      }
    }
    return b;
  }

 private:
  DataSpec spec_;
  PixelNormalization norm_;
  std::unique_ptr<h5::File> file_;
  bool uint8_ = false;
  std::vector<int64_t> shape_;
  int64_t size_ = 0;
};

}  // namespace

PixelNormalization read_pixel_normalization(const fs::path& model_dir) {
  PixelNormalization n;
  const fs::path file = model_dir / "preprocessor_config.json";
  if (!fs::exists(file)) return n;
  const auto j = read_json_file(file);
  auto number = [&](const char* key, double fallback) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    if (!it->is_number()) throw CheckpointError("'" + file.string() + "': key '" + key + "' must be a number");
    return it->get<double>();
  };
  auto flag = [&](const char* key, bool fallback) {
    auto it = j.find(key);
    return it == j.end() || !it->is_boolean() ? fallback : it->get<bool>();
  };
  auto triple = [&](const char* key, std::array<double, 3> fallback) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    if (it->is_number()) return std::array<double, 3>{it->get<double>(), it->get<double>(), it->get<double>()};
    if (!it->is_array() || it->size() != 3)
      throw CheckpointError("'" + file.string() + "': key '" + key + "' must be a number or a list of 3 numbers");
    return std::array<double, 3>{(*it)[0].get<double>(), (*it)[1].get<double>(), (*it)[2].get<double>()};
  };
  n.do_rescale = flag("do_rescale", n.do_rescale);
  n.rescale_factor = number("rescale_factor", n.rescale_factor);
  n.do_normalize = flag("do_normalize", n.do_normalize);
  n.mean = triple("image_mean", n.mean);
  n.std = triple("image_std", n.std);
  return n;
}

std::unique_ptr<DataSource> DataSource::open(const DataSpec& spec, const DataExpectations& expect,
                                             const PixelNormalization& pixels) {
  switch (spec.format) {
    case DataSpec::Format::tokens_h5:
      return std::make_unique<TokensH5>(spec, expect);
    case DataSpec::Format::tokens_bin:
      return std::make_unique<TokensBin>(spec, expect);
    case DataSpec::Format::images_h5:
      return std::make_unique<ImagesH5>(spec, expect, pixels);
  }
  HAWADA_ASSERT(false, "unhandled data format");
  return nullptr;
}

}  // namespace hawada
