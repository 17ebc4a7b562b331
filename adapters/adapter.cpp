#include "adapters/adapter.h"

#include <algorithm>
#include <memory>

#include <nlohmann/json.hpp>

#include "adapters/huggingface/llama.h"
#include "adapters/huggingface/vit.h"
#include "core/errors.h"

namespace hawada {
namespace {

// The registry: one row per architecture.
const std::vector<std::unique_ptr<ModelAdapter>>& registry() {
  static const auto adapters = [] {
    std::vector<std::unique_ptr<ModelAdapter>> v;
    v.push_back(std::make_unique<LlamaAdapter>());
    v.push_back(std::make_unique<VitAdapter>());
    return v;
  }();
  return adapters;
}

[[noreturn]] void fail(const std::filesystem::path& file, const char* key, const std::string& what) {
  throw CheckpointError("'" + file.string() + "': key '" + key + "': " + what);
}

}  // namespace

const ModelAdapter& adapter_for(const nlohmann::json& config, const std::filesystem::path& config_file) {
  auto it = config.find("model_type");
  if (it == config.end() || !it->is_string()) fail(config_file, "model_type", "missing or not a string");
  const auto& type = it->get_ref<const std::string&>();
  for (const auto& a : registry())
    if (a->model_type() == type) return *a;
  std::string list;
  for (const auto& t : supported_model_types()) list += (list.empty() ? "" : ", ") + t;
  fail(config_file, "model_type", "unsupported model_type '" + type + "' (supported: " + list + ")");
}

ModelShape model_shape(const ArchSummary& a) {
  ModelShape s;
  s.family = a.model_type == "vit" ? ModelShape::Family::vit : ModelShape::Family::llama;
  s.layers = a.layers;
  s.hidden = a.hidden;
  s.heads = a.heads;
  s.kv_heads = a.kv_heads;
  s.head_dim = a.head_dim;
  s.ffn = a.ffn;
  s.vocab = a.vocab_size;
  s.tied = a.tied_embeddings;
  s.attention_bias = a.attention_bias;
  s.mlp_bias = a.mlp_bias;
  s.num_labels = a.num_labels;
  s.image_size = a.image_size;
  s.patch_size = a.patch_size;
  s.qkv_bias = a.qkv_bias;
  s.classifier = a.num_labels > 0;
  s.pooler = a.pooler;
  return s;
}

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const auto& a : registry()) out.emplace_back(a->model_type());
  std::sort(out.begin(), out.end());
  return out;
}

namespace config_field {

int64_t integer(const nlohmann::json& config, const char* key, const std::filesystem::path& file,
                const int64_t* fallback, bool allow_zero) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) {
    if (!fallback) fail(file, key, "missing required integer");
    return *fallback;
  }
  if (!it->is_number_integer()) fail(file, key, "expected an integer, got " + it->dump());
  int64_t v = it->get<int64_t>();
  if (v < 0 || (v == 0 && !allow_zero))
    fail(file, key, std::string("expected ") + (allow_zero ? "a non-negative" : "a positive") + " integer, got " +
                        std::to_string(v));
  return v;
}

bool boolean(const nlohmann::json& config, const char* key, const std::filesystem::path& file, bool fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail(file, key, "expected true or false, got " + it->dump());
  return it->get<bool>();
}

std::string string(const nlohmann::json& config, const char* key, const std::filesystem::path& file,
                   const std::string& fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_string()) fail(file, key, "expected a string, got " + it->dump());
  return it->get<std::string>();
}

std::string architecture(const nlohmann::json& config, const std::string& fallback) {
  auto a = config.find("architectures");
  if (a != config.end() && a->is_array() && !a->empty() && (*a)[0].is_string()) return (*a)[0].get<std::string>();
  return fallback;
}

double number(const nlohmann::json& config, const char* key, const std::filesystem::path& file, double fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_number()) fail(file, key, "expected a number, got " + it->dump());
  return it->get<double>();
}

}  // namespace config_field
}  // namespace hawada
