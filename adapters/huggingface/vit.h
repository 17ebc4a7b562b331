// Vision Transformers (model_type "vit"): ViTForImageClassification and ViTModel, e.g. ViT-Base/16.
#pragma once

#include "adapters/adapter.h"

namespace hawada {

/// Adapter for transformers' ViT models.
class VitAdapter final : public ModelAdapter {
 public:
  std::string_view model_type() const override { return "vit"; }
  ArchSummary summarize(const nlohmann::json& config, const std::filesystem::path& config_file) const override;
  ArchSummary summarize_checkpoint(const HfCheckpoint& checkpoint) const override;
  ShapeTraits traits(const ArchSummary& arch) const override;
  std::unique_ptr<Model> load(const HfCheckpoint& checkpoint, const LoadOptions& options) const override;
  const RoleTable& roles() const override;
  std::vector<std::string> weight_prefixes() const override;
  nlohmann::json pruned_config(const nlohmann::json& config, const Plan& plan) const override;
};

}  // namespace hawada
