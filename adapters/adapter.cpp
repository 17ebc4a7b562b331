#include "adapters/adapter.h"

#include <algorithm>
#include <memory>

#include <nlohmann/json.hpp>

#include "adapters/huggingface/llama.h"
#include "adapters/huggingface/vit.h"
#include "core/errors.h"
#include "core/json_input.h"

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


}  // namespace hawada
