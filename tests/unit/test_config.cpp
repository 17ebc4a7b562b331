// Config parsing: valid fixtures (values, defaults, round trip through to_toml) and one invalid fixture per
// kind of mistake. Each invalid fixture starts with
//   # expect: [key=<dotted.key>] line=<N> [contains=<text to the end of the line>]
// and must throw ConfigError whose message starts "<fixture path>:<N>:" and names the key. `key` is left
// out only where no key applies (a TOML syntax error).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/base/text.h"
#include "pipeline/config.h"
#include "training/student.h"

#include <nlohmann/json.hpp>

#ifndef HAWADA_TEST_DATA_DIR
#error "HAWADA_TEST_DATA_DIR must be defined as the absolute path of tests/data"
#endif

namespace hawada {
namespace {

namespace fs = std::filesystem;

const fs::path kDir = fs::path(HAWADA_TEST_DATA_DIR) / "config";

std::vector<fs::path> toml_files(const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".toml") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

std::string test_name(const testing::TestParamInfo<fs::path>& info) {
  std::string name = info.param.stem().string();
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}

fs::path abs(const fs::path& p) { return (kDir / p).lexically_normal(); }

/// The message of the ConfigError that parsing `text` throws, or a failure when none is thrown.
std::string config_error(std::string_view text, const std::string& name = "inline.toml") {
  try {
    parse_config(text, kDir / "valid" / name);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected ConfigError for:\n" << text;
  return {};
}

const char* kRequired = "[model]\npath = \"../model\"\n[data]\npath = \"../data.bin\"\n";

// ---- Valid fixtures. ---------------------------------------------------------------------------------

TEST(ConfigFixtures, EnoughOfEachKind) {
  EXPECT_GE(toml_files(kDir / "valid").size(), 4u);
  EXPECT_GE(toml_files(kDir / "invalid").size(), 18u);
}

TEST(ConfigValid, MinimalFillsDefaults) {
  const Config c = load_config(kDir / "valid" / "minimal.toml");
  EXPECT_EQ(c.source, abs("valid/minimal.toml"));
  EXPECT_EQ(c.run.dir, abs("valid/runs/minimal"));
  EXPECT_EQ(c.run.seed, 0);
  EXPECT_EQ(c.run.threads_per_rank, 0);
  EXPECT_EQ(c.model.path, abs("model"));
  EXPECT_EQ(c.model.dtype, ComputeDtype::bf16);
  EXPECT_EQ(c.model.head_matmul, HeadMatmul::auto_);
  EXPECT_EQ(c.data.format, DataFormat::tokens_h5);
  EXPECT_EQ(c.data.path, abs("data.bin"));
  EXPECT_EQ(c.data.seq_len, 512);
  EXPECT_EQ(c.data.samples, 0);
  EXPECT_TRUE(c.teacher.model.empty());
  EXPECT_EQ(c.teacher.cache_root, abs("valid/runs/teacher-cache"));
  EXPECT_EQ(c.teacher.top_k, 64);
  EXPECT_EQ(c.teacher.store_dtype, StoreDtype::bf16);
  EXPECT_EQ(c.teacher.batch_size, 8);
  EXPECT_TRUE(c.gates.heads);
  EXPECT_TRUE(c.gates.ffn);
  EXPECT_FALSE(c.gates.hidden);
  EXPECT_DOUBLE_EQ(c.gates.init, 0.9);
  EXPECT_DOUBLE_EQ(c.gates.temperature, 2.0 / 3.0);
  EXPECT_EQ(c.train, TrainConfig{});
  EXPECT_EQ(c.budget, BudgetConfig{});
  EXPECT_EQ(c.search, SearchConfig{});
  EXPECT_TRUE(c.search.latency_table.empty());
  EXPECT_EQ(c.run.device, DeviceRequest::auto_);
  EXPECT_EQ(c.calibrate, CalibrateConfig{});
  EXPECT_EQ(c.heal, HealConfig{});
  EXPECT_EQ(c.heal.steps, 0) << "heal is off unless asked for";
  EXPECT_EQ(c.evaluate, EvaluateConfig{});
  EXPECT_EQ(c.export_.name, "slim");
  EXPECT_EQ(c.export_.max_shard_size, 5'000'000'000ULL);
  EXPECT_EQ(c.export_.dtype, ExportDtype::keep);
  EXPECT_TRUE(c.export_.gguf.empty()) << "no GGUF files unless asked for";
  EXPECT_TRUE(c.export_.llama_cpp.empty());
  EXPECT_EQ(c.export_.python, "python3");
  EXPECT_EQ(c.dist.backend, DistBackend::auto_);
  EXPECT_DOUBLE_EQ(c.dist.timeout_s, 600);
}

TEST(ConfigValid, FullSetsEveryKey) {
  const Config c = load_config(kDir / "valid" / "full.toml");
  EXPECT_EQ(c.run.dir, abs("valid/experiments/full"));
  EXPECT_EQ(c.run.seed, 1234);
  EXPECT_EQ(c.run.threads_per_rank, 6);
  EXPECT_EQ(c.run.device, DeviceRequest::cpu);
  EXPECT_EQ(c.model.path, abs("model"));
  EXPECT_EQ(c.model.dtype, ComputeDtype::fp32);
  EXPECT_EQ(c.model.head_matmul, HeadMatmul::bf16);
  EXPECT_EQ(c.data.format, DataFormat::tokens_bin);
  EXPECT_EQ(c.data.path, abs("data.bin"));
  EXPECT_EQ(c.data.seq_len, 2048);
  EXPECT_EQ(c.data.samples, 10000);
  EXPECT_EQ(c.teacher.model, abs("teacher"));
  EXPECT_EQ(c.teacher.cache_root, fs::path("/tmp/hawada-teacher-cache"));
  EXPECT_EQ(c.teacher.top_k, 128);
  EXPECT_EQ(c.teacher.store_dtype, StoreDtype::fp16);
  EXPECT_EQ(c.teacher.batch_size, 16);
  EXPECT_EQ(
      c.gates,
      (GatesConfig{.heads = false, .ffn = true, .hidden = true, .layers = true, .init = 0.75, .temperature = 0.5}));
  EXPECT_EQ(c.train, (TrainConfig{.steps = 5000,
                                  .micro_batch = 2,
                                  .grad_accum = 8,
                                  .lr = 0.01,
                                  .warmup = 250,
                                  .kd_temperature = 2.5,
                                  .mse_weight = 0.125,
                                  .checkpoint_every = 500,
                                  .holdout = 32,
                                  .importance_batches = 4}));
  EXPECT_EQ(c.budget.metric, BudgetMetric::latency);
  EXPECT_DOUBLE_EQ(c.budget.target, 0.3);
  EXPECT_EQ(c.budget.latency_batch, 8);
  EXPECT_DOUBLE_EQ(c.budget.device_flops, 1979e12);
  EXPECT_DOUBLE_EQ(c.budget.device_bandwidth, 4.8e12);
  EXPECT_EQ(c.budget.latency_mode, LatencyMode::decode);
  EXPECT_EQ(c.budget.decode_context, 1024);
  EXPECT_DOUBLE_EQ(c.budget.layer_overhead_s, 5e-5);
  EXPECT_EQ(c.search.ffn_multiple, 64);
  EXPECT_EQ(c.search.hidden_multiple, 32);
  EXPECT_EQ(c.search.latency_table, abs("latency_table.csv"));
  EXPECT_TRUE(c.search.prune_kv_groups);
  EXPECT_EQ(c.search.probe_shapes, 2);
  EXPECT_EQ(c.search.probe_steps, 5);
  EXPECT_EQ(c.search.probe_samples, 12);
  EXPECT_EQ(c.calibrate, (CalibrateConfig{.steps = 40,
                                          .lr = 0.02,
                                          .warmup = 4,
                                          .micro_batch = 3,
                                          .grad_accum = 2,
                                          .output_scales = false,
                                          .checkpoint_every = 20,
                                          .reconstruct = true,
                                          .reconstruct_samples = 96,
                                          .reconstruct_attention = false,
                                          .reconstruct_order = RefitOrder::before_scales}));
  EXPECT_EQ(c.heal, (HealConfig{.steps = 300,
                                .lr = 0.0002,
                                .warmup = 30,
                                .micro_batch = 6,
                                .grad_accum = 3,
                                .weight_decay = 0.01,
                                .clip = 0.5,
                                .train = "mlp,norm",
                                .checkpoint_every = 150,
                                .eval_every = 25,
                                .data = abs("data.bin"),
                                .samples = 64}));
  EXPECT_EQ(c.evaluate.data, abs("data.bin"));
  EXPECT_EQ(c.evaluate.samples, 48);
  EXPECT_EQ(c.evaluate.latency_repeats, 5);
  EXPECT_EQ(c.export_.name, "llama-slim-30");
  EXPECT_EQ(c.export_.max_shard_size, 2'000'000'000ULL);
  EXPECT_EQ(c.export_.dtype, ExportDtype::bf16);
  EXPECT_EQ(c.export_.base_model, "meta-llama/Llama-3.2-1B");
  EXPECT_EQ(c.export_.gguf, (std::vector<GgufType>{GgufType::q8_0, GgufType::f16}));
  EXPECT_EQ(c.export_.llama_cpp, abs("llama_cpp"));
  EXPECT_EQ(c.export_.python, (kDir / "../../../.venv/bin/python").lexically_normal().string())
      << "a python path with '/' resolves against the config file";
  EXPECT_EQ(c.dist.backend, DistBackend::nccl);
  EXPECT_DOUBLE_EQ(c.dist.timeout_s, 1800.5);
  EXPECT_EQ(c.dist.check_every, 25);
}

TEST(ConfigValid, IntegersForDoublesUnitSizesAndInlineTables) {
  const Config c = load_config(kDir / "valid" / "numbers.toml");
  EXPECT_EQ(c.model.path, abs("model"));
  EXPECT_EQ(c.data.path, abs("data.bin"));
  EXPECT_DOUBLE_EQ(c.gates.temperature, 1.0);
  EXPECT_DOUBLE_EQ(c.train.lr, 1.0);
  EXPECT_DOUBLE_EQ(c.train.kd_temperature, 2.0);
  EXPECT_DOUBLE_EQ(c.train.mse_weight, 0.0);
  EXPECT_EQ(c.train.warmup, 0);
  EXPECT_DOUBLE_EQ(c.budget.target, 1.0);
  EXPECT_EQ(c.export_.max_shard_size, 2ULL << 30);
  EXPECT_DOUBLE_EQ(c.dist.timeout_s, 30.0);
}

TEST(ConfigValid, VitImages) {
  const Config c = load_config(kDir / "valid" / "vit.toml");
  EXPECT_EQ(c.run.seed, 7);
  EXPECT_EQ(c.model.dtype, ComputeDtype::fp32);
  EXPECT_EQ(c.data.format, DataFormat::images_h5);
  EXPECT_EQ(c.data.seq_len, 197);
  EXPECT_FALSE(c.gates.heads);
  EXPECT_FALSE(c.gates.ffn);
  EXPECT_TRUE(c.gates.hidden);
  EXPECT_EQ(c.budget.metric, BudgetMetric::params);
  EXPECT_DOUBLE_EQ(c.budget.target, 0.6);
  EXPECT_EQ(c.export_.name, "vit-slim");
  EXPECT_EQ(c.export_.max_shard_size, 500'000'000ULL);
  EXPECT_EQ(c.export_.dtype, ExportDtype::fp32);
  EXPECT_EQ(c.dist.backend, DistBackend::mpi);
}

class ValidConfig : public testing::TestWithParam<fs::path> {};

TEST_P(ValidConfig, RoundTripsThroughToToml) {
  const Config c = load_config(GetParam());
  const std::string text = to_toml(c);
  Config back;
  ASSERT_NO_THROW(back = parse_config(text, c.source)) << text;
  EXPECT_EQ(back, c) << text;
  EXPECT_EQ(to_toml(back), text);
  // Every path is absolute, so the text means the same from anywhere.
  Config moved = parse_config(text, "/nonexistent/elsewhere.toml");
  moved.source = c.source;
  EXPECT_EQ(moved, c) << text;
}

TEST_P(ValidConfig, ToTomlListsEverySectionInOrder) {
  const std::string text = to_toml(load_config(GetParam()));
  std::size_t from = 0;
  for (const char* section : {"[run]", "[model]", "[data]", "[teacher]", "[gates]", "[train]", "[budget]", "[search]",
                              "[calibrate]", "[heal]", "[export]", "[evaluate]", "[dist]"}) {
    const std::size_t at = text.find(std::string(section) + "\n", from);
    ASSERT_NE(at, std::string::npos) << section << " missing or out of order in:\n" << text;
    EXPECT_TRUE(at == 0 || text[at - 1] == '\n') << text;
    from = at + 1;
  }
  for (const char* key : {"\ndir = ", "\nseed = ", "\nthreads_per_rank = ", "\ncache_root = ", "\ntop_k = ",
                          "\nlatency_table = ", "\nmax_shard_size = ", "\ntimeout_s = ", "\ncheckpoint_every = "})
    EXPECT_NE(text.find(key), std::string::npos) << key << " missing in:\n" << text;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ValidConfig, testing::ValuesIn(toml_files(kDir / "valid")), test_name);

// ---- Invalid fixtures. -------------------------------------------------------------------------------

struct Expectation {
  std::string key;
  std::string line;
  std::string contains;
};

Expectation read_expectation(const fs::path& file) {
  std::ifstream in(file);
  std::string first;
  std::getline(in, first);
  const std::string prefix = "# expect:";
  Expectation e;
  if (first.rfind(prefix, 0) != 0) {
    ADD_FAILURE() << file << ": first line must be '# expect: key=... line=...', got '" << first << "'";
    return e;
  }
  std::string rest = first.substr(prefix.size());
  if (const auto c = rest.find(" contains="); c != std::string::npos) {
    e.contains = rest.substr(c + 10);
    rest.resize(c);
  }
  std::istringstream words(rest);
  for (std::string word; words >> word;) {
    if (word.rfind("key=", 0) == 0)
      e.key = word.substr(4);
    else if (word.rfind("line=", 0) == 0)
      e.line = word.substr(5);
    else
      ADD_FAILURE() << file << ": unknown expectation '" << word << "'";
  }
  if (e.line.empty()) ADD_FAILURE() << file << ": expectation has no line=";
  return e;
}

class InvalidConfig : public testing::TestWithParam<fs::path> {};

TEST_P(InvalidConfig, ThrowsConfigErrorWithPositionAndKey) {
  const fs::path& file = GetParam();
  const Expectation expect = read_expectation(file);
  try {
    load_config(file);
    ADD_FAILURE() << file << ": no error thrown";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(file.filename().string()), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind(file.string() + ":" + expect.line + ":", 0), 0u)
        << "expected line " << expect.line << ": " << msg;
    EXPECT_NE(msg.find(":" + expect.line + ":"), std::string::npos) << msg;
    if (!expect.key.empty()) {
      EXPECT_NE(msg.find(": " + expect.key + ": "), std::string::npos) << msg;
    }
    EXPECT_NE(msg.find(expect.contains), std::string::npos) << "expected '" << expect.contains << "' in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << file << ": threw something other than ConfigError: " << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, InvalidConfig, testing::ValuesIn(toml_files(kDir / "invalid")), test_name);

// ---- Parsing from strings. ---------------------------------------------------------------------------

TEST(ConfigLoad, MissingFileIsConfigErrorNamingTheFile) {
  const fs::path missing = kDir / "valid" / "does-not-exist.toml";
  try {
    load_config(missing);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(missing.string()), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_config(kDir / "valid"), ConfigError);  // a directory
}

TEST(ConfigParse, MaxShardSizeUnits) {
  const std::pair<const char*, uint64_t> cases[] = {
      {"123456", 123456},   {"2048B", 2048},      {"100KB", 100'000}, {"500MB", 500'000'000},  {"5GB", 5'000'000'000},
      {"2GiB", 2ULL << 30}, {"1MiB", 1ULL << 20}, {"4kib", 4096},     {"7 gb", 7'000'000'000}, {"3Mib", 3ULL << 20},
  };
  for (const auto& [text, bytes] : cases) {
    const Config c =
        parse_config(std::string(kRequired) + "[export]\nmax_shard_size = \"" + text + "\"\n", kDir / "valid/x.toml");
    EXPECT_EQ(c.export_.max_shard_size, bytes) << text;
  }
}

TEST(ConfigParse, MaxShardSizeInvalidStrings) {
  for (const char* text : {"", "GB", "5 GiBs", "-5GB", "1.5GB", "5TB", "5  GB", " 5GB", "99999999999GB", "1000"}) {
    const std::string msg = config_error(std::string(kRequired) + "[export]\nmax_shard_size = \"" + text + "\"\n");
    EXPECT_NE(msg.find("inline.toml:6:"), std::string::npos) << msg;
    EXPECT_NE(msg.find("export.max_shard_size"), std::string::npos) << msg;
  }
}

TEST(ConfigParse, PathsResolveAgainstTheConfigDirectory) {
  const Config c = parse_config("[run]\ndir = \"/tmp/a/./b/../c/\"\n[model]\npath = \"" + abs("model").string() +
                                    "\"\n" + "[data]\npath = \"../data.bin\"\n[teacher]\ncache_root = \"cache\"\n",
                                kDir / "valid" / "sub" / ".." / "p.toml");
  EXPECT_EQ(c.source, abs("valid/p.toml"));
  EXPECT_EQ(c.run.dir, fs::path("/tmp/a/c"));
  EXPECT_EQ(c.model.path, abs("model"));
  EXPECT_EQ(c.data.path, abs("data.bin"));
  EXPECT_EQ(c.teacher.cache_root, abs("valid/cache"));
}

TEST(ConfigParse, RoundTripsOddStringsAndExtremeNumbers) {
  const std::string text = std::string(kRequired) +
                           "[run]\ndir = '/tmp/we\"ird\\dir\tü'\nseed = 9223372036854775807\n"
                           "[gates]\ntemperature = 1e-7\n[dist]\ntimeout_s = 1e300\n"
                           "[export]\nname = 'a b\"c'\nmax_shard_size = 18446744073709551615\n";
  Config c;
  // max_shard_size above INT64_MAX is not a TOML integer: the parser rejects it.
  EXPECT_THROW(parse_config(text, kDir / "valid/x.toml"), ConfigError);
  const std::string fitting = text.substr(0, text.rfind("max_shard_size")) + "max_shard_size = \"16GiB\"\n";
  ASSERT_NO_THROW(c = parse_config(fitting, kDir / "valid/x.toml"));
  EXPECT_EQ(c.run.dir, fs::path("/tmp/we\"ird\\dir\t\xc3\xbc"));
  EXPECT_EQ(c.run.seed, INT64_MAX);
  EXPECT_EQ(c.export_.name, "a b\"c");
  const Config back = parse_config(to_toml(c), c.source);
  EXPECT_EQ(back, c) << to_toml(c);
}

TEST(ConfigParse, DottedKeysAtTopLevel) {
  const Config d = parse_config(std::string("train.steps = 5\ntrain.warmup = 1\n") + kRequired, kDir / "valid/x.toml");
  EXPECT_EQ(d.train.steps, 5);
  EXPECT_EQ(d.train.warmup, 1);
}

TEST(ConfigParse, UnknownKeyWithoutNearMatchListsTheKeys) {
  const std::string msg = config_error(std::string(kRequired) + "[budget]\nwhatever = 1\n");
  EXPECT_NE(msg.find("inline.toml:6:1: budget.whatever: unknown key 'budget.whatever' (expected one of: "
                     "metric, target, latency_batch, latency_mode, decode_context, layer_overhead_s, device_flops, "
                     "device_bandwidth, runtime, gguf, threads, rates)"),
            std::string::npos)
      << msg;
}

TEST(ConfigParse, EmptyLatencyTableMeansAnalytic) {
  const Config c = parse_config(std::string(kRequired) + "[search]\nlatency_table = \"\"\n", kDir / "valid/x.toml");
  EXPECT_TRUE(c.search.latency_table.empty());
}

TEST(ConfigParse, ErrorFormatIsFileLineColumnKeyWhatExpectedGot) {
  const std::string msg = config_error(std::string(kRequired) + "[train]\nsteps = 10.5\n");
  EXPECT_EQ(msg, (kDir / "valid" / "inline.toml").string() +
                     ":6:9: train.steps: wrong type (expected integer, got float 10.5)");
}

// The stage fingerprints hash whole sections (train_gates and rounding_search: [budget]): every key of a section
// is in its text, a changed value changes only its own section, and the sections cover the whole config.
TEST(ConfigSections, EachKeyChangesItsOwnSectionOnly) {
  const Config base = parse_config(kRequired, kDir / "valid" / "inline.toml");
  const auto before = config_sections(base);
  std::string joined;
  for (const auto& [name, text] : before) {
    EXPECT_EQ(text.rfind("[" + name + "]\n", 0), 0u) << name;
    joined += text;
  }
  EXPECT_EQ(joined.size() + before.size() - 1, to_toml(base).size())
      << "sections are to_toml's text (blank lines apart)";
  for (const char* key : {"latency_batch = ", "decode_context = ", "layer_overhead_s = ", "device_flops = ",
                          "device_bandwidth = ", "target = ", "metric = ", "latency_mode = "})
    EXPECT_NE(before.at("budget").find(std::string("\n") + key), std::string::npos) << key;
  Config changed = base;
  changed.budget.layer_overhead_s = 1e-5;
  auto after = config_sections(changed);
  EXPECT_NE(after.at("budget"), before.at("budget"));
  after.erase("budget");
  auto rest = before;
  rest.erase("budget");
  EXPECT_EQ(after, rest);
  changed = base;
  changed.heal.lr = base.heal.lr * 2;
  EXPECT_EQ(config_sections(changed).at("budget"), before.at("budget"));
}

TEST(ConfigEnums, ToStringIsTheTomlSpelling) {
  EXPECT_EQ(to_string(ComputeDtype::bf16), "bf16");
  EXPECT_EQ(to_string(DataFormat::images_h5), "images_h5");
  EXPECT_EQ(to_string(StoreDtype::fp16), "fp16");
  EXPECT_EQ(to_string(BudgetMetric::latency), "latency");
  // Parsing, printing and the plans and logs (metric_name) spell every metric alike.
  for (const BudgetMetric m : {BudgetMetric::params, BudgetMetric::non_embedding_params, BudgetMetric::latency})
    EXPECT_EQ(to_string(m), metric_name(m));
  EXPECT_EQ(to_string(ExportDtype::keep), "keep");
  EXPECT_EQ(to_string(HeadMatmul::auto_), "auto");
  EXPECT_EQ(to_string(DistBackend::auto_), "auto");
  EXPECT_EQ(to_string(DistBackend::nccl), "nccl");
}

// ---- core/text. --------------------------------------------------------------------------------------

TEST(Text, EditDistance) {
  EXPECT_EQ(edit_distance("", ""), 0u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("steps", "steps"), 0u);
  EXPECT_EQ(edit_distance("stpes", "steps"), 1u);  // adjacent swap counts once
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("batchsize", "batch_size"), 1u);
}

TEST(Text, NearestSuggestsTyposOnly) {
  const std::string_view keys[] = {"steps", "micro_batch", "grad_accum", "lr", "warmup"};
  EXPECT_EQ(nearest("stpes", keys), "steps");
  EXPECT_EQ(nearest("micro_batches", keys), "micro_batch");
  EXPECT_EQ(nearest("warmup", keys), "warmup");
  EXPECT_EQ(nearest("zzz", keys), std::nullopt);
  EXPECT_EQ(nearest("lrr", keys), "lr");
  EXPECT_EQ(nearest("xyz", keys, 3), "lr");
  EXPECT_EQ(nearest("stpes", std::span<const std::string_view>{}), std::nullopt);
}

}  // namespace
}  // namespace hawada

namespace hawada {
namespace {

ModelShape llama_shape(int64_t layers) {
  const nlohmann::json c = {{"model_type", "llama"},    {"num_hidden_layers", layers}, {"hidden_size", 64},
                            {"num_attention_heads", 4}, {"num_key_value_heads", 2},    {"intermediate_size", 96},
                            {"vocab_size", 256}};
  return model_shape(adapter_for(c, "config.json").summarize(c, "config.json"));
}

std::string model_error(const Config& c, const ModelShape& s) {
  try {
    effective_gates(c, s);
    budget_spec(c, s);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return {};
}

// Settings only the model can judge (checked before the first stage): layer gates need an architecture
// that can drop blocks and a second layer to drop; a decode budget needs a causal LM. Each with its twin.
TEST(ConfigModel, LayerGatesAndDecodeBudgetsNeedAModelThatTakesThem) {
  Config c = parse_config(kRequired, kDir / "valid" / "inline.toml");
  c.gates.layers = true;
  EXPECT_EQ(model_error(c, llama_shape(4)), "");
  EXPECT_NE(model_error(c, llama_shape(1)).find("gates.layers = true needs at least 2 layers"), std::string::npos);
  ModelShape fixed = llama_shape(4);
  fixed.traits.drop_layers = false;
  EXPECT_NE(model_error(c, fixed).find("gates.layers = true, but this architecture cannot drop blocks"),
            std::string::npos);
  c.gates.layers = false;
  EXPECT_EQ(model_error(c, fixed), "");

  c.budget.latency_mode = LatencyMode::decode;
  EXPECT_EQ(model_error(c, llama_shape(4)), "");
  EXPECT_EQ(budget_spec(c, llama_shape(4)).context, 256);
  EXPECT_EQ(budget_spec(c, llama_shape(4)).tokens, 1);
  ModelShape encoder = llama_shape(4);
  encoder.traits.causal = false;
  EXPECT_NE(model_error(c, encoder).find("budget.latency_mode = \"decode\""), std::string::npos);
}

}  // namespace
}  // namespace hawada
