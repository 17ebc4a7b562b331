// LLaMA-style causal LMs: LLaMA-3.2-1B and compatible, and the architectures that are LLaMA's layout
// with a difference: mistral (sliding-window attention), qwen2 (q/k/v biases), qwen3 (per-head q/k norms),
// phi3 (fused projections), gpt_neox (LayerNorms, fused biased qkv, parallel residual),
// gemma3_text (Gemma 3: (1 + w) RMSNorms around both branches, a scaled embedding, q/k norms,
// query_pre_attn_scalar, sliding and full layers by layer_types with their own RoPE, GeLU-tanh, soft-capping).
#pragma once

#include "adapters/adapter.h"

namespace hawada {

/// Adapter for transformers' LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
/// Gemma3ForCausalLM, Phi3ForCausalLM (fused qkv_proj and gate_up_proj) and GPTNeoXForCausalLM (a fused per-head
/// qkv with biases, LayerNorms, a parallel or sequential residual, a GeLU MLP).
class LlamaAdapter final : public ModelAdapter {
 public:
  static constexpr const char* kModelTypes[] = {"llama",       "mistral", "qwen2",   "qwen3",
                                                "gemma3_text", "phi3",    "gpt_neox"};
  explicit LlamaAdapter(std::string_view model_type) : type_(model_type) {}
  std::string_view model_type() const override { return type_; }
  ArchSummary summarize(const nlohmann::json& config, const std::filesystem::path& config_file) const override;
  ShapeTraits traits(const ArchSummary& arch) const override;
  std::unique_ptr<Model> load(const HfCheckpoint& checkpoint, const LoadOptions& options) const override;
  const RoleTable& roles() const override;
  nlohmann::json pruned_config(const nlohmann::json& config, const Plan& plan) const override;
  /// Gemma 3 with hidden channels pruned: its branches' output norms rescaled for the smaller embedding scale.
  std::vector<safetensors::NamedTensor> prune_weights(const HfCheckpoint& checkpoint, const Plan& plan,
                                                      const GateValues& folds,
                                                      std::optional<at::ScalarType> dtype) const override;

 private:
  std::string type_;
};

}  // namespace hawada
