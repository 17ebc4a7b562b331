#include "adapters/roles.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>

#include "adapters/prune.h"
#include "adapters/weights.h"
#include "core/base/errors.h"
#include "core/io/checkpoint.h"
#include "core/prune/slicing.h"

namespace hawada {

int64_t RoleTable::size(Axis axis, const ArchSummary& a) {
  switch (axis) {
    case Axis::hidden:
      return a.hidden;
    case Axis::q:
      return a.heads * a.head_dim;
    case Axis::kv:
      return a.kv_heads * a.head_dim;
    case Axis::ffn:
      return a.ffn;
    case Axis::head_dim:
      return a.head_dim;
    case Axis::vocab:
      return a.vocab_size;
    case Axis::positions:
      return a.positions;
    case Axis::token_types:
      return a.token_types;
    case Axis::labels:
      return a.num_labels;
    case Axis::channels:
      return a.channels;
    case Axis::patch:
      return a.patch_size;
    case Axis::pooled:
      return a.pooled > 0 ? a.pooled : a.hidden;
    case Axis::one:
      return 1;
    case Axis::fused:
      HAWADA_ASSERT(false, "a fused axis is sized by its role's parts");
  }
  return 0;
}

std::vector<int64_t> RoleTable::shape(size_t i, const ArchSummary& arch) const {
  std::vector<int64_t> out;
  for (Axis axis : roles_[i].axes) {
    if (axis != Axis::fused) {
      out.push_back(size(axis, arch));
      continue;
    }
    int64_t n = 0;
    for (Axis part : roles_[i].parts) n += size(part, arch);
    out.push_back(n);
  }
  return out;
}

namespace {

// The kept rows of a fused axis: each part's kept indices (all of a part that is not pruned) where the
// layout puts them. `sizes` are the parts' dense sizes; per head, every part must keep the same heads.
std::vector<int64_t> fused_kept(const WeightRole& r, const std::vector<const std::vector<int64_t>*>& kept,
                                const std::vector<int64_t>& sizes, int64_t head_dim, const std::string& tensor) {
  std::vector<int64_t> out;
  if (r.fuse == Fuse::blocks) {
    int64_t offset = 0;
    for (size_t j = 0; j < r.parts.size(); ++j) {
      if (kept[j]) {
        for (int64_t k : *kept[j]) out.push_back(offset + k);
      } else {
        for (int64_t k = 0; k < sizes[j]; ++k) out.push_back(offset + k);
      }
      offset += sizes[j];
    }
    return out;
  }
  const auto n = static_cast<int64_t>(r.parts.size());
  for (size_t j = 0; j < r.parts.size(); ++j) {
    HAWADA_ASSERT(kept[j] && sizes[j] == sizes[0], "per-head parts are head channels of equal head counts");
    if (kept[j]->size() != kept[0]->size())
      throw CheckpointError("tensor '" + tensor + "': its per-head parts keep different heads");
    for (int64_t c : *kept[j])
      out.push_back((c / head_dim) * n * head_dim + static_cast<int64_t>(j) * head_dim + c % head_dim);
  }
  std::sort(out.begin(), out.end());
  // Head h' of the pruned model must hold the same dense head in every part.
  for (size_t x = 0; x < out.size(); ++x)
    if (out[x] / (n * head_dim) != out[x - x % static_cast<size_t>(n * head_dim)] / (n * head_dim))
      throw CheckpointError("tensor '" + tensor + "': its per-head parts keep different heads");
  return out;
}

// What one layer keeps of each pruned axis, and the axes' dense sizes.
struct LayerKept {
  const Plan& plan;
  int64_t layer = -1;  // -1: a tensor outside the layers (only hidden is pruned)
  LayerFolds lf;
  std::vector<int64_t> kv;

  const std::vector<int64_t>* of(Axis axis) const {
    switch (axis) {
      case Axis::hidden:
        return &plan.hidden;
      case Axis::q:
        return layer >= 0 ? &lf.q : nullptr;
      case Axis::kv:
        return layer >= 0 ? &kv : nullptr;
      case Axis::ffn:
        return layer >= 0 ? &lf.ffn : nullptr;
      default:
        return nullptr;
    }
  }
  int64_t dense_size(Axis axis) const {
    const ModelShape& d = plan.dense.shape;
    switch (axis) {
      case Axis::q:
        return d.heads * d.head_dim;
      case Axis::kv:
        return d.kv_heads * d.head_dim;
      case Axis::ffn:
        return d.ffn;
      case Axis::hidden:
        return d.hidden;
      default:
        HAWADA_ASSERT(false, "a fused axis of pruned parts");
    }
    return 0;
  }
};

// One stored tensor of role `r` sliced to what `k` keeps, gate values folded where the role says.
at::Tensor slice_role(const WeightRole& r, const at::Tensor& t, const LayerKept& k, const std::string& name) {
  if (r.fold != Fold::none) {
    HAWADA_ASSERT(k.layer >= 0 && r.axes[0] == Axis::hidden, "an output projection of a layer, rows along hidden");
    const at::Tensor& rows = r.fold == Fold::attention_out ? k.lf.attn_rows : k.lf.mlp_rows;
    if (r.axes.size() == 1) return slice_vector(t, k.plan.hidden, rows);
    const at::Tensor& cols = r.fold == Fold::attention_out ? k.lf.head_scale : k.lf.ffn_scale;
    return slice_linear(t, k.plan.hidden, *k.of(r.axes[1]), cols, rows);
  }
  at::Tensor s = t;
  for (size_t d = 0; d < r.axes.size(); ++d) {
    if (r.axes[d] == Axis::fused) {
      std::vector<const std::vector<int64_t>*> parts;
      std::vector<int64_t> sizes;
      for (Axis part : r.parts) parts.push_back(k.of(part)), sizes.push_back(k.dense_size(part));
      s = slice_dim(s, static_cast<int64_t>(d), fused_kept(r, parts, sizes, k.plan.dense.shape.head_dim, name));
    } else if (const std::vector<int64_t>* kept = k.of(r.axes[d])) {
      s = slice_dim(s, static_cast<int64_t>(d), *kept);
    }
  }
  return s.contiguous();
}

}  // namespace

bool RoleTable::per_layer(size_t i) const { return roles_[i].name.find("%d") != std::string_view::npos; }

std::string RoleTable::name(size_t i, int64_t layer, std::string_view prefix) const {
  const WeightRole& r = roles_[i];
  std::string n = r.prefixed ? std::string(prefix) : std::string();
  const size_t at = r.name.find("%d");
  if (at == std::string_view::npos) return n + std::string(r.name);
  HAWADA_ASSERT(layer >= 0, "a per-layer role needs its layer");
  return n + std::string(r.name.substr(0, at)) + std::to_string(layer) + std::string(r.name.substr(at + 2));
}

bool RoleTable::present(size_t i, const ArchSummary& a) const {
  switch (roles_[i].presence) {
    case Presence::always:
      return true;
    case Presence::qkv_bias:
      return a.qkv_bias;
    case Presence::out_bias:
      return a.out_bias;
    case Presence::mlp_bias:
      return a.mlp_bias;
    case Presence::qk_norm:
      return a.qk_norm;
    case Presence::untied_head:
      return !a.tied_embeddings;
    case Presence::classifier:
      return a.num_labels > 0;
    case Presence::pooler:
      return a.pooler;
    case Presence::buffer:
    case Presence::alias:
      return false;
  }
  return false;
}

std::optional<size_t> RoleTable::match(std::string_view full, std::string_view prefix, int64_t* layer) const {
  for (size_t i = 0; i < roles_.size(); ++i) {
    const WeightRole& r = roles_[i];
    std::string_view n = full;
    if (r.prefixed && !prefix.empty()) {
      if (n.substr(0, prefix.size()) != prefix) continue;
      n.remove_prefix(prefix.size());
    }
    const size_t at = r.name.find("%d");
    if (at == std::string_view::npos) {
      if (n == r.name) {
        *layer = -1;
        return i;
      }
      continue;
    }
    const std::string_view head = r.name.substr(0, at), tail = r.name.substr(at + 2);
    if (n.size() <= head.size() + tail.size() || n.substr(0, head.size()) != head ||
        n.substr(n.size() - tail.size()) != tail)
      continue;
    const std::string_view digits = n.substr(head.size(), n.size() - head.size() - tail.size());
    if (digits.empty() || digits.size() > 6 || (digits.size() > 1 && digits[0] == '0')) continue;
    bool all_digits = true;
    for (char c : digits) all_digits = all_digits && c >= '0' && c <= '9';
    if (!all_digits) continue;
    *layer = std::stoll(std::string(digits));
    return i;
  }
  return std::nullopt;
}

std::string RoleTable::kind(std::string_view name, std::string_view prefix) const {
  int64_t layer = -1;
  const auto i = match(name, prefix, &layer);
  return i ? std::string(roles_[*i].kind) : "other";
}

int64_t RoleTable::parameters(const ArchSummary& arch) const {
  int64_t total = 0;
  for (size_t i = 0; i < roles_.size(); ++i) {
    if (!present(i, arch)) continue;
    int64_t n = 1;
    for (int64_t s : shape(i, arch)) n *= s;
    total += per_layer(i) ? n * arch.layers : n;
  }
  return total;
}

std::vector<safetensors::NamedTensor> RoleTable::random_weights(const ArchSummary& arch, double std,
                                                                at::ScalarType dtype, at::Generator& gen,
                                                                std::string_view prefix) const {
  std::vector<safetensors::NamedTensor> out;
  auto one = [&](size_t i, int64_t layer) {
    const std::vector<int64_t> s = shape(i, arch);
    at::Tensor t;
    switch (roles_[i].init) {
      case Init::normal:
        t = at::empty(s, at::kFloat).normal_(0.0, std, gen).to(dtype);
        break;
      case Init::zeros:
        t = at::zeros(s, dtype);
        break;
      case Init::ones:
        t = at::ones(s, dtype);
        break;
    }
    out.push_back({name(i, layer, prefix), t});
  };
  for (size_t i = 0; i < roles_.size(); ++i)
    if (!per_layer(i) && present(i, arch)) one(i, -1);
  for (int64_t l = 0; l < arch.layers; ++l)
    for (size_t i = 0; i < roles_.size(); ++i)
      if (per_layer(i) && present(i, arch)) one(i, l);
  return out;
}

std::vector<safetensors::NamedTensor> RoleTable::prune(const HfCheckpoint& ckpt, const Plan& plan,
                                                       const GateValues& folds, std::optional<at::ScalarType> dtype,
                                                       std::string_view prefix) const {
  const int64_t hd = plan.dense.shape.head_dim;
  // Kept blocks are renumbered 0.. in order; a dropped block's tensors are left out.
  std::vector<int64_t> renumbered(static_cast<size_t>(plan.dense.shape.layers), -1);
  for (size_t k = 0; k < plan.layers.size(); ++k)
    renumbered[static_cast<size_t>(plan.layers[k])] = static_cast<int64_t>(k);
  std::vector<safetensors::NamedTensor> out;
  for (const std::string& stored_name : ckpt.tensor_names()) {
    int64_t layer = -1;
    const auto i = match(stored_name, prefix, &layer);
    if (!i || (layer >= plan.dense.shape.layers))
      throw CheckpointError("'" + ckpt.dir().string() + "': no pruning rule for tensor '" + stored_name + "'");
    if (layer >= 0 && renumbered[static_cast<size_t>(layer)] < 0) continue;
    const std::string full = layer >= 0 ? name(*i, renumbered[static_cast<size_t>(layer)], prefix) : stored_name;
    const WeightRole& r = roles_[*i];
    const at::Tensor stored = ckpt.tensor(stored_name);
    const at::Tensor t = dtype && at::isFloatingType(stored.scalar_type()) ? stored.to(*dtype) : stored;
    if (r.axes.empty()) {  // a buffer of any shape, kept
      out.push_back({full, t.contiguous()});
      continue;
    }
    if (static_cast<int64_t>(r.axes.size()) != t.dim())
      throw CheckpointError("'" + ckpt.dir().string() + "': tensor '" + full + "' has " + std::to_string(t.dim()) +
                            " dimensions, its role " + std::to_string(r.axes.size()));
    LayerKept k{plan, layer};
    if (layer >= 0) {
      k.lf = layer_folds(plan, folds, layer);
      k.kv = expand_indices(plan.kv_heads[static_cast<size_t>(layer)], hd);
    }
    const at::Tensor s = slice_role(r, t, k, full);
    out.push_back({full, s});
  }
  return out;
}

RoleLoader::RoleLoader(WeightLoader& loader, const RoleTable& table, const ArchSummary& arch, std::string prefix)
    : w_(loader), table_(table), arch_(arch), prefix_(std::move(prefix)) {}

at::Tensor RoleLoader::operator()(size_t i, int64_t layer) {
  const WeightRole& r = table_[i];
  const std::string n = table_.name(i, layer, prefix_);
  bool load = table_.present(i, arch_);
  if (r.presence == Presence::pooler || r.presence == Presence::alias) load = w_.has(n);
  if (!load) return {};
  const std::vector<int64_t> s = table_.shape(i, arch_);
  return r.use == Use::matrix ? w_.matrix(n, s) : w_.get(n, s);
}

void RoleLoader::finish() {
  for (size_t i = 0; i < table_.roles().size(); ++i) {
    const WeightRole& r = table_[i];
    const bool known_unused =
        r.presence == Presence::buffer || (r.presence == Presence::untied_head && arch_.tied_embeddings);
    if (!known_unused) continue;
    for (int64_t l = 0; l < (table_.per_layer(i) ? arch_.layers : 1); ++l) {
      const std::string n = table_.name(i, table_.per_layer(i) ? l : -1, prefix_);
      if (w_.has(n)) w_.ignore(n);
    }
  }
  w_.finish();
}

}  // namespace hawada
