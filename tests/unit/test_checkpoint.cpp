// Hugging Face model directories: single and sharded weights, index/shard agreement, side files,
// pickle refusal, and the adapters' config.json reading.
#include <gtest/gtest.h>

#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/io/checkpoint.h"
#include "tests/unit/test_util.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;
using testing::TempDir;

const char* kLlamaConfig = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
  "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
  "intermediate_size": 128, "vocab_size": 100, "tie_word_embeddings": true, "torch_dtype": "float32"
})";

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p) << s; }

std::vector<safetensors::NamedTensor> some_weights() {
  std::vector<safetensors::NamedTensor> t;
  for (int i = 0; i < 4; ++i) t.push_back({"w" + std::to_string(i), at::full({64}, i, at::kFloat)});
  return t;
}

TEST(HfCheckpoint, OpensSingleFileAndListsSideFiles) {
  TempDir d;
  write_text(d.path() / "config.json", kLlamaConfig);
  write_text(d.path() / "tokenizer.json", "{}");
  write_text(d.path() / "generation_config.json", "{}");
  write_text(d.path() / "notes.txt", "not copied");
  safetensors::write_model_weights(d.path(), some_weights(), 1 << 20);
  auto c = HfCheckpoint::open(d.path());
  EXPECT_FALSE(c.sharded());
  EXPECT_EQ(c.weight_files(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(c.side_files(), (std::vector<std::string>{"generation_config.json", "tokenizer.json"}));
  EXPECT_EQ(c.tensor_names().size(), 4u);
  EXPECT_EQ(c.total_numel(), 256u);
  EXPECT_EQ(c.tensor("w3")[5].item<float>(), 3.0f);
  EXPECT_EQ(c.config()["hidden_size"], 64);
}

TEST(HfCheckpoint, OpensShardedWeights) {
  TempDir d;
  write_text(d.path() / "config.json", kLlamaConfig);
  safetensors::write_model_weights(d.path(), some_weights(), 512);
  auto c = HfCheckpoint::open(d.path());
  EXPECT_TRUE(c.sharded());
  EXPECT_EQ(c.weight_files().size(), 2u);
  EXPECT_EQ(c.tensor("w2")[0].item<float>(), 2.0f);
  expect_error<CheckpointError>([&] { c.tensor("nope"); }, {"'nope'", d.path().string()});
}

TEST(HfCheckpoint, RefusesIndexAndShardsThatDisagree) {
  TempDir d;
  write_text(d.path() / "config.json", kLlamaConfig);
  safetensors::write_model_weights(d.path(), some_weights(), 512);
  const auto index = d.path() / "model.safetensors.index.json";
  const std::string good = read_text_file(index);
  auto j = nlohmann::json::parse(good);

  j["weight_map"]["ghost"] = "model-00001-of-00002.safetensors";
  write_text(index, j.dump());
  expect_error<CheckpointError>([&] { HfCheckpoint::open(d.path()); }, {"'ghost'", "does not hold it"});

  j = nlohmann::json::parse(good);
  j["weight_map"].erase("w0");
  write_text(index, j.dump());
  expect_error<CheckpointError>([&] { HfCheckpoint::open(d.path()); }, {"'w0'", "does not list"});

  j = nlohmann::json::parse(good);
  j["weight_map"]["w0"] = "model-00002-of-00002.safetensors";
  write_text(index, j.dump());
  expect_error<CheckpointError>([&] { HfCheckpoint::open(d.path()); }, {"'w0'", "places in"});

  j = nlohmann::json::parse(good);
  j["weight_map"]["w0"] = "model-00009-of-00009.safetensors";
  write_text(index, j.dump());
  expect_error<CheckpointError>([&] { HfCheckpoint::open(d.path()); }, {"model-00009-of-00009", "does not exist"});
}

TEST(HfCheckpoint, RefusesPickleOnlyWithConversionHint) {
  TempDir d;
  write_text(d.path() / "config.json", kLlamaConfig);
  write_text(d.path() / "pytorch_model.bin", "pickle bytes");
  expect_error<CheckpointError>([&] { HfCheckpoint::open(d.path()); },
                                {"pytorch_model.bin", "safetensors", "save_pretrained", d.path().string()});
}

TEST(HfCheckpoint, RefusesMissingPieces) {
  TempDir d;
  expect_error<CheckpointError>([&] { HfCheckpoint::open(d.path() / "absent"); }, {"does not exist"});
  expect_error<CheckpointError>([&] { HfCheckpoint::open(d.path()); }, {"no config.json"});
  write_text(d.path() / "config.json", "{\"model_type\": ");
  expect_error<CheckpointError>([&] { HfCheckpoint::open(d.path()); }, {"config.json", "not valid JSON"});
  write_text(d.path() / "config.json", kLlamaConfig);
  expect_error<CheckpointError>([&] { HfCheckpoint::open(d.path()); }, {"no model.safetensors"});
}

TEST(Adapters, SummarizeLlamaConfig) {
  auto config = nlohmann::json::parse(kLlamaConfig);
  const auto& a = adapter_for(config, "config.json");
  EXPECT_EQ(a.model_type(), "llama");
  auto s = a.summarize(config, "config.json");
  EXPECT_EQ(s.architecture, "LlamaForCausalLM");
  EXPECT_EQ(s.layers, 2);
  EXPECT_EQ(s.heads, 4);
  EXPECT_EQ(s.kv_heads, 2);
  EXPECT_EQ(s.head_dim, 16);
  EXPECT_EQ(s.ffn, 128);
  EXPECT_TRUE(s.tied_embeddings);
}

TEST(Adapters, UnknownModelTypeListsSupported) {
  auto config = nlohmann::json::parse(R"({"model_type": "gpt2"})");
  expect_error<CheckpointError>([&] { adapter_for(config, "/m/config.json"); },
                                {"/m/config.json", "'gpt2'", "llama", "vit"});
}

TEST(Adapters, MissingOrMistypedFieldsNameTheKey) {
  auto config = nlohmann::json::parse(kLlamaConfig);
  config.erase("num_hidden_layers");
  expect_error<CheckpointError>([&] { adapter_for(config, "c.json").summarize(config, "c.json"); },
                                {"c.json", "num_hidden_layers", "missing"});
  config = nlohmann::json::parse(kLlamaConfig);
  config["hidden_size"] = "64";
  expect_error<CheckpointError>([&] { adapter_for(config, "c.json").summarize(config, "c.json"); },
                                {"hidden_size", "expected an integer"});
  config = nlohmann::json::parse(kLlamaConfig);
  config["num_key_value_heads"] = 3;
  expect_error<CheckpointError>([&] { adapter_for(config, "c.json").summarize(config, "c.json"); },
                                {"num_key_value_heads 3"});
}

}  // namespace
}  // namespace hawada
