// Training and calibration data: token HDF5 files (input_ids [N, L] + optional attention_mask), flat
// binary token files cut into windows of seq_len, and image HDF5 files (pixel_values [N, C, H, W],
// uint8 normalised as the model's preprocessor_config.json says, or float already normalised).
// Every refusal is a DataError naming the file and the dataset.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "core/prune/batch.h"

namespace hawada {

/// Where the data is and how to cut it.
struct DataSpec {
  enum class Format { tokens_h5, tokens_bin, images_h5 };
  Format format = Format::tokens_h5;
  std::filesystem::path path;
  int64_t seq_len = 0;                       ///< tokens per sample; for tokens_h5 it must equal the file's
  int64_t samples = 0;                       ///< 0 = all
  int token_bytes = 2;                       ///< tokens_bin: 2 (uint16) or 4 (uint32)
  std::string samples_key = "data.samples";  ///< the config key `samples` came from, for errors
};

/// How uint8 pixels become model inputs (transformers' image processors: rescale, then normalise).
struct PixelNormalization {
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> mean{0.5, 0.5, 0.5};
  std::array<double, 3> std{0.5, 0.5, 0.5};
};
/// Reads `model_dir/preprocessor_config.json`; the image processor's defaults (mean and std 0.5) when it is absent.
PixelNormalization read_pixel_normalization(const std::filesystem::path& model_dir);

/// What the model accepts; a sample outside it is a DataError naming the file and dataset.
struct DataExpectations {
  int64_t vocab_size = 0;  ///< LMs: ids must lie in [0, vocab_size)
  int64_t channels = 3;    ///< vision
  int64_t image_size = 0;  ///< vision: H == W == image_size
};

/// A dataset of fixed-shape samples, read by ranges.
class DataSource {
 public:
  virtual ~DataSource() = default;
  /// Opens and checks the file's datasets (dtype, rank, shapes) and the expectations.
  static std::unique_ptr<DataSource> open(const DataSpec& spec, const DataExpectations& expect,
                                          const PixelNormalization& pixels = {});
  /// Number of samples (after DataSpec::samples).
  virtual int64_t size() const = 0;
  /// Samples [start, start + count), validated (token ids inside the vocabulary).
  virtual Batch read(int64_t start, int64_t count) const = 0;
  /// XXH64 of the data file's bytes and of how it is cut into samples, for the cache fingerprint
  /// (reads the whole file: call it on one rank and broadcast).
  virtual uint64_t content_hash() const = 0;
};

}  // namespace hawada
