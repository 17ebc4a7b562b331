#include "adapters/adapter.h"

#include <algorithm>
#include <memory>

#include <nlohmann/json.hpp>

#include "adapters/huggingface/bert.h"
#include "adapters/huggingface/llama.h"
#include "adapters/huggingface/vit.h"
#include "core/base/errors.h"
#include "core/base/json_input.h"
#include "core/io/checkpoint.h"

namespace hawada {
namespace {

// The registry: one row per architecture.
const std::vector<std::unique_ptr<ModelAdapter>>& registry() {
  static const auto adapters = [] {
    std::vector<std::unique_ptr<ModelAdapter>> v;
    for (const char* type : LlamaAdapter::kModelTypes) v.push_back(std::make_unique<LlamaAdapter>(type));
    v.push_back(std::make_unique<VitAdapter>());
    v.push_back(std::make_unique<BertAdapter>());
    return v;
  }();
  return adapters;
}

[[noreturn]] void fail(const std::filesystem::path& file, const char* key, const std::string& what) {
  throw CheckpointError("'" + file.string() + "': key '" + key + "': " + what);
}

std::string supported_list() {
  std::string list;
  for (const auto& t : supported_model_types()) list += (list.empty() ? "" : ", ") + t;
  return list;
}

}  // namespace

at::Tensor Model::decode(const at::Tensor&, KvCache&) const {
  throw UsageError("this model does not decode token by token (not a causal language model)");
}

std::pair<Projection, Projection> Model::output_projections(int64_t) const {
  throw UsageError(
      "calibrate.reconstruct: refitting the output projections is implemented for the LLaMA-family causal LMs "
      "(llama, gemma3_text, phi3, gpt_neox), not for this architecture: set calibrate.reconstruct = false");
}

const ModelAdapter& adapter_for(const nlohmann::json& config, const std::filesystem::path& config_file) {
  auto it = config.find("model_type");
  if (it == config.end() || !it->is_string()) fail(config_file, "model_type", "missing or not a string");
  const auto& type = it->get_ref<const std::string&>();
  for (const auto& a : registry())
    if (a->model_type() == type) return *a;
  fail(config_file, "model_type", "unsupported model_type '" + type + "' (supported: " + supported_list() + ")");
}

ArchSummary ModelAdapter::summarize_checkpoint(const HfCheckpoint& ckpt) const {
  return summarize(ckpt.config(), ckpt.dir() / "config.json");
}

std::string ModelAdapter::weight_prefix(const HfCheckpoint& ckpt) const {
  const std::vector<std::string> prefixes = weight_prefixes();
  for (const std::string& p : prefixes)
    if (ckpt.contains(roles().name(0, -1, p))) return p;
  return prefixes.back();
}

std::vector<safetensors::NamedTensor> ModelAdapter::prune_weights(const HfCheckpoint& ckpt, const Plan& plan,
                                                                  const GateValues& folds,
                                                                  std::optional<at::ScalarType> dtype) const {
  return roles().prune(ckpt, plan, folds, dtype, weight_prefix(ckpt));
}

std::string ModelAdapter::weight_kind(const std::string& name) const {
  for (const std::string& p : weight_prefixes())
    if (const std::string k = roles().kind(name, p); k != "other") return k;
  return "other";
}

nlohmann::json ModelAdapter::pruned_config(const nlohmann::json& config, const Plan& plan) const {
  nlohmann::json c = config;
  const ModelShape& s = plan.chosen.shape;
  c["hidden_size"] = s.hidden;
  c["num_attention_heads"] = s.heads;
  c["intermediate_size"] = s.ffn;
  if (s.layers != plan.dense.shape.layers) {
    c["num_hidden_layers"] = s.layers;
    // Per-layer settings follow their layers (transformers validates len(layer_types) == num_hidden_layers).
    for (const char* key : kPerLayerConfigKeys) {
      auto it = c.find(key);
      if (it == c.end() || !it->is_array()) continue;
      if (static_cast<int64_t>(it->size()) != plan.dense.shape.layers)
        throw CheckpointError(std::string("config.json key '") + key + "' has " + std::to_string(it->size()) +
                              " entries, num_hidden_layers is " + std::to_string(plan.dense.shape.layers));
      nlohmann::json kept = nlohmann::json::array();
      for (int64_t l : plan.layers) kept.push_back((*it)[static_cast<size_t>(l)]);
      *it = std::move(kept);
    }
  }
  return c;
}

const ModelAdapter& adapter_for_type(const std::string& type) {
  for (const auto& a : registry())
    if (a->model_type() == type) return *a;
  throw CheckpointError("unsupported model_type '" + type + "' (supported: " + supported_list() + ")");
}

ModelShape model_shape(const ArchSummary& a) {
  ModelShape s;
  s.layers = a.layers;
  s.hidden = a.hidden;
  s.heads = a.heads;
  s.kv_heads = a.kv_heads;
  s.head_dim = a.head_dim;
  s.ffn = a.ffn;
  s.traits = adapter_for_type(a.model_type).traits(a);
  return s;
}

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const auto& a : registry()) out.emplace_back(a->model_type());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace hawada
