// The hawada-pipeline executable: subcommands, output, and exit codes (0 ok, 1 runtime, 2 usage/config).
#include <gtest/gtest.h>

#include <ATen/ops/full.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "core/io/safetensors.h"
#include "tests/unit/test_util.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using testing::run_capture;
using testing::TempDir;

const std::string kCli = HAWADA_CLI;
const std::string kData = HAWADA_TEST_DATA_DIR;

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(Cli, HelpAndVersion) {
  auto [code, out] = run_capture(kCli + " --help");
  EXPECT_EQ(code, 0);
  for (const char* sub :
       {"run", "validate", "inspect", "forward", "export", "make-model", "make-data", "profile", "evaluate"})
    EXPECT_TRUE(contains(out, std::string("  ") + sub + " ")) << sub << " missing from:\n" << out;
  EXPECT_TRUE(contains(out, "Exit codes: 0 success")) << out;
  std::tie(code, out) = run_capture(kCli + " inspect --help");
  EXPECT_EQ(code, 0);
  EXPECT_TRUE(contains(out, "MODEL_DIR")) << out;
  std::tie(code, out) = run_capture(kCli + " --version");
  EXPECT_EQ(code, 0);
  EXPECT_TRUE(contains(out, "hawada-pipeline " HAWADA_VERSION)) << out;
}

TEST(Cli, UsageErrorsExitTwoWithSuggestion) {
  auto [code, out] = run_capture(kCli + " inspekt x");
  EXPECT_EQ(code, 2);
  EXPECT_TRUE(contains(out, "did you mean 'inspect'")) << out;
  std::tie(code, out) = run_capture(kCli);
  EXPECT_EQ(code, 2);
  std::tie(code, out) = run_capture(kCli + " inspect");
  EXPECT_EQ(code, 2);
  EXPECT_TRUE(contains(out, "MODEL_DIR is required")) << out;
  std::tie(code, out) = run_capture(kCli + " inspect /x --yaml");
  EXPECT_EQ(code, 2);
  EXPECT_TRUE(contains(out, "not expected: --yaml")) << out;
  EXPECT_TRUE(contains(out, "hawada-pipeline inspect --help")) << out;
  std::tie(code, out) = run_capture(kCli + " profile /x --out t.json --repeats zero");
  EXPECT_EQ(code, 2);
  EXPECT_TRUE(contains(out, "--repeats")) << out;
  // Every subcommand has generated help.
  std::tie(code, out) = run_capture(kCli + " evaluate --help");
  EXPECT_EQ(code, 0);
  EXPECT_TRUE(contains(out, "--samples")) << out;
}

TEST(Cli, ValidatePrintsResolvedConfigAndRefusesBadOnes) {
  auto [code, out] = run_capture(kCli + " validate " + kData + "/config/valid/minimal.toml");
  EXPECT_EQ(code, 0) << out;
  EXPECT_TRUE(contains(out, "[train]")) << out;
  EXPECT_TRUE(contains(out, "top_k = 64")) << out;
  // A resolved config is itself a valid config.
  TempDir d;
  std::ofstream(d.path() / "resolved.toml") << out;
  auto [code2, out2] = run_capture(kCli + " validate " + (d.path() / "resolved.toml").string());
  EXPECT_EQ(code2, 0) << out2;
  EXPECT_EQ(out2, out);

  std::tie(code, out) = run_capture(kCli + " validate " + kData + "/config/invalid/unknown_key_typo.toml");
  EXPECT_EQ(code, 2);
  EXPECT_TRUE(contains(out, "ConfigError")) << out;
  EXPECT_TRUE(contains(out, "unknown_key_typo.toml:")) << out;
}

TEST(Cli, InspectTextAndJson) {
  TempDir d;
  std::ofstream(d.path() / "config.json") << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 1, "num_hidden_layers": 3,
    "intermediate_size": 96, "vocab_size": 50, "dtype": "bfloat16"})";
  safetensors::write_model_weights(
      d.path(), {{"a", at::full({10, 10}, 1, at::kBFloat16)}, {"b", at::full({5}, 1, at::kFloat)}}, 1 << 20);
  auto [code, out] = run_capture(kCli + " inspect --json " + d.path().string());
  ASSERT_EQ(code, 0) << out;
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["architecture"], "LlamaForCausalLM");
  EXPECT_EQ(j["layers"], 3);
  EXPECT_EQ(j["kv_heads"], 1);
  EXPECT_EQ(j["head_dim"], 8);
  EXPECT_EQ(j["parameters"], 105);
  EXPECT_EQ(j["dtype"], "BF16");
  EXPECT_EQ(j["config_dtype"], "bfloat16");
  std::tie(code, out) = run_capture(kCli + " inspect " + d.path().string());
  EXPECT_EQ(code, 0);
  EXPECT_TRUE(contains(out, "parameters    105")) << out;
}

TEST(Cli, InspectOfABrokenModelExitsOneNamingTheFile) {
  TempDir d;
  std::ofstream(d.path() / "config.json") << R"({"model_type": "llama"})";
  std::ofstream(d.path() / "model.safetensors") << "garbage!garbage!";
  auto [code, out] = run_capture(kCli + " inspect " + d.path().string());
  EXPECT_EQ(code, 1);
  EXPECT_TRUE(contains(out, "CheckpointError")) << out;
  EXPECT_TRUE(contains(out, (d.path() / "model.safetensors").string())) << out;
  EXPECT_TRUE(contains(out, "rank 0/1 on host")) << out;
}

TEST(Cli, UnwritableCacheRootIsAnIoErrorNamingThePath) {
  TempDir d;
  std::ofstream(d.path() / "blocker") << "a file where a directory should go";
  std::ofstream(d.path() / "run.toml") << "[run]\ndir = \"" << (d.path() / "run").string() << "\"\n"
                                       << "[model]\npath = \"" << kData << "/tiny-llama\"\n"
                                       << "[data]\nformat = \"tokens_bin\"\npath = \"" << kData
                                       << "/tiny-tokens.bin\"\nseq_len = 8\n"
                                       << "[teacher]\ncache_root = \"" << (d.path() / "blocker" / "cache").string()
                                       << "\"\n";
  auto [code, out] = run_capture(kCli + " run " + (d.path() / "run.toml").string());
  EXPECT_EQ(code, 1) << out;
  EXPECT_TRUE(contains(out, "IoError")) << out;
  EXPECT_TRUE(contains(out, (d.path() / "blocker").string())) << out;
  EXPECT_TRUE(std::filesystem::exists(d.path() / "run" / "config.resolved.toml")) << "written before the failure";
}

}  // namespace
}  // namespace hawada
