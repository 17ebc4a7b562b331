// Data readers on HDF5 fixtures written by h5py (tests/data/make_data_fixtures.py): values, shapes,
// windows of flat token files, pixel normalisation against transformers' ViTImageProcessor, and one
// refusal per kind of bad file, each a DataError naming the file and dataset.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <fstream>

#include "core/base/errors.h"
#include "core/data/data.h"
#include "core/data/h5.h"
#include "tests/unit/test_util.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;
using Format = DataSpec::Format;

const fs::path kDir = fs::path(HAWADA_TEST_DATA_DIR) / "data";

DataSpec spec(Format f, const std::string& file, int64_t seq_len = 8, int64_t samples = 0) {
  return {f, kDir / file, seq_len, samples, 2};
}

TEST(Data, TokensH5ReadsIdsAndMaskAsInt64) {
  auto src = DataSource::open(spec(Format::tokens_h5, "tokens_i32.h5"), {.vocab_size = 64});
  ASSERT_EQ(src->size(), 6);
  Batch b = src->read(2, 3);
  EXPECT_EQ(b.input_ids.sizes(), (at::IntArrayRef{3, 8}));
  EXPECT_EQ(b.input_ids.scalar_type(), at::kLong);
  ASSERT_TRUE(b.attention_mask.defined());
  // Same rows through the raw HDF5 reader.
  auto f = h5::File::open_read(kDir / "tokens_i32.h5");
  std::vector<int64_t> all(6 * 8);
  f.read_all("input_ids", h5::Type::i64, all.data());
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 8; ++c) EXPECT_EQ(b.input_ids[r][c].item<int64_t>(), all[(2 + r) * 8 + c]);
  EXPECT_EQ(DataSource::open(spec(Format::tokens_h5, "tokens_i32.h5", 8, 4), {.vocab_size = 64})->size(), 4);
}

TEST(Data, ContentHashFollowsBytesAndCut) {
  auto a = DataSource::open(spec(Format::tokens_h5, "tokens_i32.h5"), {});
  auto b = DataSource::open(spec(Format::tokens_h5, "tokens_i32.h5"), {});
  auto c = DataSource::open(spec(Format::tokens_h5, "tokens_i32.h5", 8, 5), {});
  auto d = DataSource::open(spec(Format::tokens_h5, "tokens_i64.h5"), {});
  EXPECT_EQ(a->content_hash(), b->content_hash());
  EXPECT_NE(a->content_hash(), c->content_hash());
  EXPECT_NE(a->content_hash(), d->content_hash());
}

TEST(Data, TokensBinCutsWindows) {
  testing::TempDir dir;
  std::vector<uint16_t> tokens(50);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(i * 3);
  std::ofstream(dir.path() / "t.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 2));
  DataSpec s{Format::tokens_bin, dir.path() / "t.bin", 16, 0, 2};
  auto src = DataSource::open(s, {.vocab_size = 200});
  ASSERT_EQ(src->size(), 3);  // 50 tokens -> 3 windows of 16, the remainder dropped
  Batch b = src->read(1, 2);
  EXPECT_EQ(b.input_ids[0][0].item<int64_t>(), 16 * 3);
  EXPECT_EQ(b.input_ids[1][15].item<int64_t>(), 47 * 3);
  expect_error<DataError>([&] { DataSource::open(s, {.vocab_size = 100})->read(2, 1); },
                          {"t.bin", "sample 2, position 2", "token id 102", "[0, 100)"});
  s.token_bytes = 4;  // 100 bytes is 25 uint32 tokens: fine; 98 bytes would not be
  std::ofstream(dir.path() / "odd.bin", std::ios::binary) << std::string(98, '\0');
  s.path = dir.path() / "odd.bin";
  expect_error<DataError>([&] { DataSource::open(s, {}); }, {"odd.bin", "32-bit tokens"});
}

TEST(Data, ImagesU8NormaliseLikeTransformers) {
  const auto norm = read_pixel_normalization(kDir);
  EXPECT_NEAR(norm.mean[1], 0.456, 1e-12);
  auto src = DataSource::open(spec(Format::images_h5, "images_u8.h5"), {.channels = 3, .image_size = 32}, norm);
  Batch b = src->read(0, 3);
  at::Tensor expected = at::empty({3, 3, 32, 32}, at::kFloat);
  h5::File::open_read(kDir / "images_u8.h5").read_all("expected_pixel_values", h5::Type::f32, expected.data_ptr());
  const double diff = (b.pixel_values - expected).abs().max().item<double>();
  std::printf("max |ours - ViTImageProcessor| = %.3g\n", diff);
  EXPECT_LT(diff, 1e-5);
  auto f32 = DataSource::open(spec(Format::images_h5, "images_f32.h5"), {.channels = 3, .image_size = 32}, norm);
  at::Tensor raw = at::empty({2, 3, 32, 32}, at::kFloat);
  h5::File::open_read(kDir / "images_f32.h5").read_all("pixel_values", h5::Type::f32, raw.data_ptr());
  EXPECT_TRUE(at::equal(f32->read(0, 2).pixel_values, raw)) << "float pixels are taken as already normalised";
}

struct BadFile {
  Format format;
  const char* file;
  std::vector<std::string> mentions;
};

TEST(Data, BadFilesAreDataErrorsNamingFileAndDataset) {
  const DataExpectations lm{.vocab_size = 64}, vit{.channels = 3, .image_size = 32};
  const BadFile cases[] = {
      {Format::tokens_h5, "tokens_float.h5", {"dataset 'input_ids'", "expected integer", "float32"}},
      {Format::tokens_h5, "tokens_rank3.h5", {"dataset 'input_ids'", "[2, 3, 8]"}},
      {Format::tokens_h5, "tokens_bad_mask.h5", {"dataset 'attention_mask'", "[6, 7]"}},
      {Format::tokens_h5, "tokens_no_ids.h5", {"dataset 'input_ids'", "missing"}},
      {Format::tokens_h5, "not_hdf5.h5", {"not an HDF5 file"}},
      {Format::images_h5, "images_wrong_size.h5", {"dataset 'pixel_values'", "[3, 16, 16]", "[3, 32, 32]"}},
      {Format::images_h5, "images_int16.h5", {"dataset 'pixel_values'", "int16"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.file);
    std::vector<std::string> mentions = c.mentions;
    mentions.push_back(c.file);
    expect_error<DataError>([&] { DataSource::open(spec(c.format, c.file), c.format == Format::images_h5 ? vit : lm); },
                            mentions);
  }
  expect_error<DataError>([&] { DataSource::open(spec(Format::tokens_h5, "tokens_i32.h5", 16), lm); },
                          {"tokens_i32.h5", "8 tokens", "data.seq_len is 16"});
  expect_error<DataError>([&] { DataSource::open(spec(Format::tokens_h5, "tokens_i32.h5", 8, 7), lm); },
                          {"tokens_i32.h5", "data.samples = 7", "holds 6"});
  expect_error<DataError>([&] { DataSource::open(spec(Format::tokens_h5, "tokens_oov.h5"), lm)->read(0, 4); },
                          {"tokens_oov.h5", "dataset 'input_ids'", "sample 2, position 5", "token id 64"});
}

}  // namespace
}  // namespace hawada
