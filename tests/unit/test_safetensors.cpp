// Safetensors: round trips for every dtype, interoperability with Python's `safetensors`, and one
// crafted file per refusal rule of DESIGN.md, each asserting the error type and what it names.
#include <gtest/gtest.h>

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/io/safetensors.h"
#include "tests/unit/test_util.h"

namespace hawada::safetensors {
namespace {

namespace fs = std::filesystem;
using hawada::testing::TempDir;

// A tensor of `dtype` with varied bit patterns (random bytes, so every dtype's full range is hit).
at::Tensor patterned(DType dtype, std::vector<int64_t> shape) {
  const auto type = to_scalar_type(dtype);
  int64_t numel = 1;
  for (auto d : shape) numel *= d;
  at::Tensor bytes =
      at::randint(0, 256, {numel * static_cast<int64_t>(dtype_size(dtype))}, at::TensorOptions().dtype(at::kByte))
          .contiguous();
  if (dtype == DType::BOOL) bytes = bytes.remainder(2);  // only 0/1 are valid bools
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
  std::memcpy(t.data_ptr(), bytes.data_ptr(), bytes.numel());
  return t;
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0;
}

const std::vector<DType> kAllDTypes = {DType::BOOL, DType::U8,  DType::I8,  DType::F8_E5M2, DType::F8_E4M3,
                                       DType::I16,  DType::U16, DType::F16, DType::BF16,    DType::I32,
                                       DType::U32,  DType::F32, DType::I64, DType::U64,     DType::F64};

TEST(Safetensors, RoundTripEveryDtypeWithoutCopies) {
  TempDir dir;
  at::manual_seed(1);
  std::vector<NamedTensor> tensors;
  for (DType d : kAllDTypes) tensors.push_back({"t." + std::string(dtype_name(d)), patterned(d, {3, 5})});
  tensors.push_back({"scalar", at::randn({}, at::kFloat)});
  tensors.push_back({"empty", at::empty({0, 4}, at::kBFloat16)});
  tensors.push_back({"odd.u8", patterned(DType::U8, {7})});  // odd size must not misalign what follows
  const fs::path file = dir.path() / "all.safetensors";
  write_file(file, tensors);

  Reader reader(file);
  EXPECT_EQ(reader.header().metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(reader.header().data_offset % 8, 0u) << "header must be padded to 8 bytes";
  ASSERT_EQ(reader.header().tensors.size(), tensors.size());
  for (const auto& nt : tensors) {
    at::Tensor back = reader.tensor(nt.name);
    EXPECT_TRUE(same_bytes(back, nt.tensor)) << nt.name;
    const auto& info = reader.info(nt.name);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(reader.bytes(info)) % dtype_size(info.dtype), 0u) << nt.name;
    if (back.numel() > 0) {
      EXPECT_EQ(back.data_ptr(), reader.bytes(info)) << nt.name << " was copied";
    }
  }
}

TEST(Safetensors, TensorOutlivesReaderAndWritesStayPrivate) {
  TempDir dir;
  const fs::path file = dir.path() / "x.safetensors";
  write_file(file, {{"w", at::arange(6, at::kFloat).reshape({2, 3})}});
  at::Tensor t;
  { t = Reader(file).tensor("w"); }
  EXPECT_FLOAT_EQ(t[1][2].item<float>(), 5.0f);
  t.mul_(2);  // copy-on-write mapping: the file is unchanged
  EXPECT_FLOAT_EQ(Reader(file).tensor("w")[1][2].item<float>(), 5.0f);
}

TEST(Safetensors, WriterIsDeterministic) {
  TempDir dir;
  std::vector<NamedTensor> a = {{"b", at::ones({2}, at::kHalf)}, {"a", at::ones({3}, at::kFloat)}};
  std::vector<NamedTensor> b = {a[1], a[0]};
  write_file(dir.path() / "a.safetensors", a);
  write_file(dir.path() / "b.safetensors", b);
  EXPECT_EQ(read_text_file(dir.path() / "a.safetensors"), read_text_file(dir.path() / "b.safetensors"));
}

TEST(Safetensors, WriterRefusesDuplicateNames) {
  TempDir dir;
  std::vector<NamedTensor> t = {{"w", at::ones({2})}, {"w", at::ones({2}, at::kHalf)}};
  hawada::testing::expect_error<CheckpointError>([&] { write_file(dir.path() / "d.safetensors", t); },
                                                 {"'w'", "duplicate"});
  EXPECT_FALSE(fs::exists(dir.path() / "d.safetensors"));
}

TEST(Safetensors, ShardedWeightsAndIndex) {
  TempDir dir;
  std::vector<NamedTensor> t;
  for (int i = 0; i < 5; ++i) t.push_back({"layer." + std::to_string(i), at::full({256}, i, at::kFloat)});
  auto files = write_model_weights(dir.path(), t, 2048);  // 1 KiB each: two per shard
  ASSERT_EQ(files.size(), 4u);
  EXPECT_EQ(files[0], "model-00001-of-00003.safetensors");
  auto index = parse_index(read_text_file(dir.path() / "model.safetensors.index.json"), "index");
  EXPECT_EQ(index.total_size, 5u * 1024u);
  EXPECT_EQ(index.weight_map.at("layer.4"), "model-00003-of-00003.safetensors");
  EXPECT_EQ(Reader(dir.path() / files[1]).tensor("layer.2")[0].item<float>(), 2.0f);
  EXPECT_EQ(write_model_weights(dir.path(), t, 1 << 20), std::vector<std::string>{"model.safetensors"});
}

TEST(Safetensors, ShardPlanPutsOversizedTensorsAlone) {
  EXPECT_EQ(plan_shards({10, 10, 100, 5, 5}, 20), (std::vector<size_t>{0, 0, 1, 2, 2}));
  EXPECT_EQ(plan_shards({}, 20), std::vector<size_t>{});
}

// ---- crafted files, one per refusal rule --------------------------------------------------------

struct Crafted {
  std::string header;
  std::string data;
  std::optional<uint64_t> length_override;
  std::string bytes() const {
    std::string out(8, '\0');
    uint64_t n = length_override.value_or(header.size());
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out + header + data;
  }
};

struct RefusalCase {
  const char* name;
  std::string file_bytes;
  std::vector<std::string> must_mention;
};

std::vector<RefusalCase> refusal_cases() {
  const std::string f32x2 = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  return {
      {"short_file", "abc", {"shorter than the 8-byte"}},
      {"header_too_large", Crafted{"{}", "", 100'000'001}.bytes(), {"exceeds the limit"}},
      {"header_past_eof", Crafted{"{}", "", 64}.bytes(), {"past the end"}},
      {"invalid_utf8", Crafted{"{\"w\xff\":" + f32x2 + "}", std::string(8, 'x')}.bytes(), {"UTF-8 JSON"}},
      {"invalid_json", Crafted{R"({"w": {"dtype": "F32",)", ""}.bytes(), {"UTF-8 JSON"}},
      {"metadata_not_string", Crafted{R"({"__metadata__":{"format":1}})", ""}.bytes(), {"__metadata__", "'format'"}},
      {"unknown_dtype",
       Crafted{R"({"w":{"dtype":"F24","shape":[2],"data_offsets":[0,6]}})", std::string(6, 'x')}.bytes(),
       {"tensor 'w'", "unknown dtype 'F24'"}},
      {"shape_overflow",
       Crafted{R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", std::string(8, 'x')}
           .bytes(),
       {"tensor 'w'", "overflows"}},
      {"size_mismatch",
       Crafted{R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, 'x')}.bytes(),
       {"tensor 'w'", "needs 12"}},
      {"gap",
       Crafted{
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
           std::string(20, 'x')}
           .bytes(),
       {"tensor 'b'", "gap", "'a'"}},
      {"overlap",
       Crafted{
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           std::string(12, 'x')}
           .bytes(),
       {"tensor 'b'", "overlap", "'a'"}},
      {"first_not_at_zero",
       Crafted{R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, 'x')}.bytes(),
       {"tensor 'a'", "begin at 0"}},
      {"trailing_bytes", Crafted{"{\"w\":" + f32x2 + "}", std::string(9, 'x')}.bytes(), {"1 trailing bytes", "'w'"}},
      {"tensor_past_eof",
       Crafted{"{\"w\":" + f32x2 + "}", std::string(4, 'x')}.bytes(),
       {"tensor 'w'", "past the end"}},
      {"duplicate_name",
       Crafted{"{\"w\":" + f32x2 + ",\"w\":" + f32x2 + "}", std::string(8, 'x')}.bytes(),
       {"tensor 'w'", "duplicate"}},
      {"negative_offset",
       Crafted{R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", std::string(8, 'x')}.bytes(),
       {"tensor 'w'", "non-negative"}},
  };
}

// Names the case in gtest output instead of dumping its bytes.
void PrintTo(const RefusalCase& c, std::ostream* os) { *os << c.name; }

class Refusal : public ::testing::TestWithParam<RefusalCase> {};

TEST_P(Refusal, ThrowsCheckpointErrorNamingFileAndTensor) {
  TempDir dir;
  const auto& c = GetParam();
  const fs::path file = dir.path() / (std::string(c.name) + ".safetensors");
  std::ofstream(file, std::ios::binary) << c.file_bytes;
  std::vector<std::string> mention = c.must_mention;
  mention.push_back(file.string());
  hawada::testing::expect_error<CheckpointError>([&] { Reader r(file); }, mention);
}

INSTANTIATE_TEST_SUITE_P(EveryRule, Refusal, ::testing::ValuesIn(refusal_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(SafetensorsIndex, RefusesShardNamesLeavingTheDirectory) {
  for (const char* shard : {"../x.safetensors", "/etc/passwd", "sub/x.safetensors", "..", ""}) {
    std::string json = std::string(R"({"weight_map": {"w": ")") + shard + R"("}})";
    hawada::testing::expect_error<CheckpointError>([&] { parse_index(json, "model.safetensors.index.json"); },
                                                   {"model.safetensors.index.json", "tensor 'w'"});
  }
}

TEST(SafetensorsIndex, RefusesMalformedIndex) {
  hawada::testing::expect_error<CheckpointError>([] { parse_index("[]", "idx.json"); },
                                                 {"idx.json", "not a JSON object"});
  hawada::testing::expect_error<CheckpointError>([] { parse_index(R"({"metadata":{}})", "idx.json"); }, {"weight_map"});
  hawada::testing::expect_error<CheckpointError>([] { parse_index(R"({"weight_map":{"w":3}})", "idx.json"); },
                                                 {"tensor 'w'"});
  hawada::testing::expect_error<CheckpointError>(
      [] { parse_index(R"({"weight_map":{"w":"a.safetensors","w":"b.safetensors"}})", "idx.json"); },
      {"tensor 'w'", "duplicate"});
}

// ---- interoperability with Python's safetensors -------------------------------------------------

TEST(SafetensorsPython, WeReadWhatPythonWritesAndPythonReadsWhatWeWrite) {
  if (!fs::exists(HAWADA_PYTHON)) GTEST_SKIP() << "no project venv python at " << HAWADA_PYTHON;
  TempDir dir;
  const std::string script = std::string(HAWADA_TEST_DATA_DIR) + "/../unit/safetensors_interop.py";
  // 1. Python writes every dtype plus each tensor's raw bytes; we compare ours to them.
  ASSERT_EQ(hawada::testing::run_command(std::string(HAWADA_PYTHON) + " " + script + " write " + dir.path().string()),
            0);
  Reader theirs(dir.path() / "python.safetensors");
  EXPECT_EQ(theirs.header().tensors.size(), kAllDTypes.size());
  for (const auto& info : theirs.header().tensors) {
    std::string raw = read_text_file(dir.path() / "raw" / (info.name + ".bin"));
    ASSERT_EQ(raw.size(), info.nbytes()) << info.name;
    EXPECT_EQ(std::memcmp(raw.data(), theirs.bytes(info), raw.size()), 0) << info.name;
  }
  // 2. We write every dtype plus raw bytes; Python loads our file and compares.
  std::vector<NamedTensor> ours;
  fs::create_directories(dir.path() / "ours_raw");
  for (DType d : kAllDTypes) {
    NamedTensor nt{"ours." + std::string(dtype_name(d)), patterned(d, {2, 3, 4})};
    std::ofstream(dir.path() / "ours_raw" / (nt.name + ".bin"), std::ios::binary)
        .write(static_cast<const char*>(nt.tensor.data_ptr()), static_cast<std::streamsize>(nt.tensor.nbytes()));
    ours.push_back(nt);
  }
  write_file(dir.path() / "ours.safetensors", ours);
  EXPECT_EQ(hawada::testing::run_command(std::string(HAWADA_PYTHON) + " " + script + " check " +
                                         (dir.path() / "ours.safetensors").string() + " " +
                                         (dir.path() / "ours_raw").string()),
            0);
}

}  // namespace
}  // namespace hawada::safetensors
