// LLaMA-style causal LMs (model_type "llama"): LLaMA-3.2-1B and compatible.
#pragma once

#include "adapters/adapter.h"

namespace hawada {

/// Adapter for transformers' LlamaForCausalLM.
class LlamaAdapter final : public ModelAdapter {
 public:
  std::string_view model_type() const override { return "llama"; }
  ArchSummary summarize(const nlohmann::json& config, const std::filesystem::path& config_file) const override;
  std::unique_ptr<Model> load(const HfCheckpoint& checkpoint, const LoadOptions& options) const override;
  std::vector<safetensors::NamedTensor> prune_weights(const HfCheckpoint& checkpoint, const Plan& plan,
                                                      const GateValues& folds,
                                                      std::optional<at::ScalarType> dtype) const override;
  nlohmann::json pruned_config(const nlohmann::json& config, const Plan& plan) const override;
  std::string weight_kind(const std::string& name) const override;
};

}  // namespace hawada
