// BERT encoders (model_type "bert"): BertModel, e.g. the sentence encoder all-MiniLM-L6-v2. The model
// puts out its last hidden states (ModelOutput::hidden_states): distillation and evaluation compare
// them, and the mean-pooled sentence embeddings, with the teacher's.
#pragma once

#include "adapters/adapter.h"

namespace hawada {

/// Adapter for transformers' BertModel.
class BertAdapter final : public ModelAdapter {
 public:
  std::string_view model_type() const override { return "bert"; }
  ArchSummary summarize(const nlohmann::json& config, const std::filesystem::path& config_file) const override;
  ArchSummary summarize_checkpoint(const HfCheckpoint& checkpoint) const override;
  ShapeTraits traits(const ArchSummary& arch) const override;
  std::unique_ptr<Model> load(const HfCheckpoint& checkpoint, const LoadOptions& options) const override;
  const RoleTable& roles() const override;
};

}  // namespace hawada
