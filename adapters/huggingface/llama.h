// LLaMA-style causal LMs: LLaMA-3.2-1B and compatible, and the architectures that are LLaMA's layout
// with a difference: mistral (sliding-window attention), qwen2 (q/k/v biases), qwen3 (per-head q/k norms).
#pragma once

#include "adapters/adapter.h"

namespace hawada {

/// Adapter for transformers' LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM.
class LlamaAdapter final : public ModelAdapter {
 public:
  static constexpr const char* kModelTypes[] = {"llama", "mistral", "qwen2", "qwen3"};
  explicit LlamaAdapter(std::string_view model_type) : type_(model_type) {}
  std::string_view model_type() const override { return type_; }
  ArchSummary summarize(const nlohmann::json& config, const std::filesystem::path& config_file) const override;
  ShapeTraits traits(const ArchSummary& arch) const override;
  std::unique_ptr<Model> load(const HfCheckpoint& checkpoint, const LoadOptions& options) const override;
  const RoleTable& roles() const override;
  nlohmann::json pruned_config(const nlohmann::json& config, const Plan& plan) const override;

 private:
  std::string type_;
};

}  // namespace hawada
