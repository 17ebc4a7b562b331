// The ModelAdapter interface and the registry keyed by config.json "model_type". An adapter knows
// one Hugging Face architecture: its config fields, its weight names and (as the pipeline grows) its
// modules, gates, logits and export. Adding an architecture means adding one adapter and its tests.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <memory>
#include <optional>

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include "adapters/arch.h"
#include "adapters/model.h"
#include "adapters/roles.h"
#include "core/io/safetensors.h"
#include "core/prune/cost_model.h"
#include "core/prune/shape_search.h"

namespace hawada {

class HfCheckpoint;

/// How to load a model's weights.
struct LoadOptions {
  /// Compute dtype: weights stored in another dtype are converted; none keeps the stored dtype (no copies).
  std::optional<at::ScalarType> dtype = at::kFloat;
  at::Device device = at::kCPU;
};

/// The shape the cost model needs (parameters, FLOPs, latency): the counts of `arch` and the traits its
/// adapter gives; CheckpointError listing the supported model types when arch.model_type has none.
ModelShape model_shape(const ArchSummary& arch);

/// One Hugging Face architecture.
class ModelAdapter {
 public:
  virtual ~ModelAdapter() = default;
  /// The config.json "model_type" this adapter serves.
  virtual std::string_view model_type() const = 0;
  /// Reads the architecture from config.json; CheckpointError naming the file and key when a
  /// field is missing, mistyped or inconsistent.
  virtual ArchSummary summarize(const nlohmann::json& config, const std::filesystem::path& config_file) const = 0;
  /// summarize() of the checkpoint's config.json, plus what only its weights tell (a ViTModel saved
  /// with its pooler).
  virtual ArchSummary summarize_checkpoint(const HfCheckpoint& checkpoint) const;
  /// The architecture as data for core (cost model, search, plan checks) and the tools: grouping,
  /// coupling, biases, norms, tokens per sample, the parameters and products outside the layers.
  virtual ShapeTraits traits(const ArchSummary& arch) const = 0;
  /// Loads the model: checks every weight the config implies (present, shape, no unexpected ones)
  /// and throws CheckpointError naming the tensor with expected and got.
  virtual std::unique_ptr<Model> load(const HfCheckpoint& checkpoint, const LoadOptions& options) const = 0;
  /// The architecture's weights as data (adapters/roles.h): the model's loading, pruning, parameter
  /// counts and make-model's random weights derive from it.
  virtual const RoleTable& roles() const = 0;
  /// The prefixes the table's prefixed names may carry, most specific first (ViT: "vit." inside
  /// ViTForImageClassification, none in a bare ViTModel). Default: none.
  virtual std::vector<std::string> weight_prefixes() const { return {""}; }
  /// config.json of the pruned model: the counts of plan's shape written explicitly (ints as ints).
  /// Default: hidden_size, num_attention_heads, intermediate_size, and with dropped blocks
  /// num_hidden_layers and every per-layer list (kPerLayerConfigKeys) sliced to the kept layers.
  virtual nlohmann::json pruned_config(const nlohmann::json& config, const Plan& plan) const;

  /// The prefix of `checkpoint`'s weight names: the first of weight_prefixes() under which it holds the
  /// table's first role.
  std::string weight_prefix(const HfCheckpoint& checkpoint) const;
  /// Pruned export: every tensor of `checkpoint` sliced to the structures `plan` keeps, in the
  /// stored dtype. `folds` holds gate values ([layers, heads], [layers, ffn]; undefined = 1) that
  /// are folded into the output-side weights (o_proj / down_proj columns), so the export computes
  /// what the gated student computes. With `dtype`, every tensor is converted to it first (an fp32
  /// slice keeps the folds unrounded). Tensors the role table does not know are a CheckpointError.
  virtual std::vector<safetensors::NamedTensor> prune_weights(const HfCheckpoint& checkpoint, const Plan& plan,
                                                              const GateValues& folds,
                                                              std::optional<at::ScalarType> dtype = std::nullopt) const;
  /// What a weight is, by its Hugging Face name: "attention", "mlp", "norm", "embedding" or "head"
  /// (heal.train selects by these kinds); "other" when unknown.
  std::string weight_kind(const std::string& name) const;
};

/// config.json keys holding one entry per layer, sliced with the kept layers when blocks are dropped.
inline constexpr const char* kPerLayerConfigKeys[] = {"layer_types"};

/// The weight kinds heal.train may name.
inline constexpr const char* kWeightKinds[] = {"attention", "mlp", "norm", "embedding", "head"};

/// The adapter for config["model_type"]; CheckpointError listing the supported types otherwise.
const ModelAdapter& adapter_for(const nlohmann::json& config, const std::filesystem::path& config_file);
/// The adapter of a model_type; CheckpointError listing the supported types otherwise.
const ModelAdapter& adapter_for_type(const std::string& model_type);
/// Every registered model_type, sorted.
std::vector<std::string> supported_model_types();

}  // namespace hawada
