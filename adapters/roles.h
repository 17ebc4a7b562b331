// An architecture's weights as data, one table per architecture (in the spirit of llama.cpp's
// tensor-name tables): every weight name pattern with its role: what each axis spans (which axes
// pruning slices, and by what), where gate values fold, when the weight exists, how a model loads it,
// and its kind for heal.train. Loading with expected shapes, pruning with folding, parameter counting
// and make-model's random weights all derive from the table; an adapter writes none of them by hand.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "adapters/arch.h"
#include "adapters/model.h"
#include "core/format/plan.h"
#include "core/io/safetensors.h"

namespace hawada {

class HfCheckpoint;
class WeightLoader;

/// What one axis of a weight spans. The first four are pruned; the others are kept whole.
enum class Axis : uint8_t {
  hidden,       ///< hidden channels: plan.hidden
  q,            ///< query channels (heads x head_dim): each kept head's channels
  kv,           ///< key/value channels (kv_heads x head_dim): each kept kv head's channels
  ffn,          ///< FFN channels: the layer's kept channels
  head_dim,     ///< within one head (per-head norms)
  vocab,        ///< the vocabulary
  positions,    ///< learned positions (ViT: tokens per image)
  token_types,  ///< BERT's token types
  labels,       ///< classifier outputs
  channels,     ///< image channels
  patch,        ///< patch height or width
  pooled,       ///< a pooler's outputs
  one,          ///< a leading 1
  fused,        ///< the parts of WeightRole::parts, laid out as WeightRole::fuse says (pruned as they are)
};

/// How a fused axis lays out its parts.
enum class Fuse : uint8_t {
  blocks,    ///< each part whole, one after another (Phi-3's qkv_proj rows [q | k | v], gate_up_proj [gate | up])
  per_head,  ///< head by head: head h's head_dim channels of each part in turn (GPT-NeoX's query_key_value)
};

/// Where gate values fold when pruning: an output projection's kept columns take the head (or FFN)
/// gates, its kept rows and bias the calibrated output scale.
enum class Fold : uint8_t { none, attention_out, mlp_out };

/// When a weight exists.
enum class Presence : uint8_t {
  always,
  qkv_bias,     ///< ArchSummary::qkv_bias
  out_bias,     ///< ArchSummary::out_bias
  mlp_bias,     ///< ArchSummary::mlp_bias
  qk_norm,      ///< ArchSummary::qk_norm
  untied_head,  ///< required unless the embeddings are tied; when tied, a stored copy is ignored (and pruned)
  classifier,   ///< a classifier (ArchSummary::num_labels > 0)
  pooler,       ///< loaded when the checkpoint holds it (ArchSummary::pooler for make-model and counts)
  buffer,       ///< a stored buffer: optional, never loaded (recomputed), kept or pruned as its axes say
  /// an older name of another role's weight (GPT-NeoX's embed_out for lm_head): loaded in its place when the
  /// checkpoint holds it (RoleLoader), pruned under its own name, never counted or made
  alias,
};

/// How a model loads a weight (WeightLoader): get() keeps the compute dtype; matrix() may keep a
/// matrix-product weight in fp32 on CPUs without bf16 matrix instructions.
enum class Use : uint8_t { vector, matrix };

/// make-model's random value.
enum class Init : uint8_t { normal, zeros, ones };

struct WeightRole {
  std::string_view name;   ///< the Hugging Face name; "%d" stands for the layer
  std::string_view kind;   ///< attention, mlp, norm, embedding, head (heal.train), other
  std::vector<Axis> axes;  ///< the stored shape; empty: any shape, copied as it is (buffers)
  Presence presence = Presence::always;
  Fold fold = Fold::none;
  Use use = Use::matrix;
  Init init = Init::normal;
  bool prefixed = true;          ///< takes the table's prefix (ViTForImageClassification's "vit.")
  std::vector<Axis> parts = {};  ///< what an Axis::fused axis holds (plain axes; per_head: q and kv only)
  Fuse fuse = Fuse::blocks;
};

/// One architecture's weights. Roles are addressed by their index in the table (each adapter names
/// them with an enum in table order).
class RoleTable {
 public:
  explicit RoleTable(std::vector<WeightRole> roles) : roles_(std::move(roles)) {}
  const std::vector<WeightRole>& roles() const { return roles_; }
  const WeightRole& operator[](size_t i) const { return roles_[i]; }

  /// The size of a plain `axis` in `arch` (a fused one's is its parts' sum: shape()).
  static int64_t size(Axis axis, const ArchSummary& arch);
  /// The stored shape of role `i` in `arch`.
  std::vector<int64_t> shape(size_t i, const ArchSummary& arch) const;
  /// The concrete name of role `i` (layer for per-layer roles), with `prefix` when the role takes it.
  std::string name(size_t i, int64_t layer = -1, std::string_view prefix = {}) const;
  /// True for a role whose name has a layer ("%d").
  bool per_layer(size_t i) const;
  /// True when `arch` has role `i` (pooler: when arch.pooler; buffers and a tied head: never).
  bool present(size_t i, const ArchSummary& arch) const;

  /// The role of a concrete weight name (its layer in `layer`, -1 for none), or nullopt.
  std::optional<size_t> match(std::string_view name, std::string_view prefix, int64_t* layer) const;
  /// The heal.train kind of a weight; "other" when no role matches.
  std::string kind(std::string_view name, std::string_view prefix = {}) const;

  /// Parameters of `arch`: every present role's elements.
  int64_t parameters(const ArchSummary& arch) const;
  /// make-model's random weights for `arch` (normal(0, std) for matrices and tables, ones for norm
  /// weights, zeros for biases), in table order, layer by layer.
  std::vector<safetensors::NamedTensor> random_weights(const ArchSummary& arch, double std, at::ScalarType dtype,
                                                       at::Generator& gen, std::string_view prefix = {}) const;
  /// Pruned export: every tensor of `checkpoint` sliced along its pruned axes to what `plan` keeps, gate
  /// values folded where its role says, converted to `dtype` first when given (floating tensors only).
  /// A tensor no role matches is a CheckpointError.
  std::vector<safetensors::NamedTensor> prune(const HfCheckpoint& checkpoint, const Plan& plan, const GateValues& folds,
                                              std::optional<at::ScalarType> dtype, std::string_view prefix = {}) const;

 private:
  std::vector<WeightRole> roles_;
};

/// Loads a model's weights by role: names and expected shapes from the table, presence from the
/// architecture (and, for a pooler, the checkpoint); buffers and a tied head's stored copy are taken as
/// known and left unused. finish() refuses whatever no role took.
class RoleLoader {
 public:
  RoleLoader(WeightLoader& loader, const RoleTable& table, const ArchSummary& arch, std::string prefix = {});
  /// Role `i` (of `layer`), or an undefined tensor when the architecture has none.
  at::Tensor operator()(size_t i, int64_t layer = -1);
  /// Marks every buffer and a tied head's stored copy as known; then WeightLoader::finish().
  void finish();
  const std::string& prefix() const { return prefix_; }

 private:
  WeightLoader& w_;
  const RoleTable& table_;
  const ArchSummary& arch_;
  std::string prefix_;
};

}  // namespace hawada
