#include "adapters/huggingface/vit.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "adapters/layers.h"
#include "adapters/weights.h"
#include "core/base/errors.h"
#include "core/io/checkpoint.h"

namespace hawada {
namespace {

namespace cf = config_field;

// ViT's weights as save_pretrained writes them (transformers 4.x and 5.x alike), in one table; the
// prefixed names carry "vit." inside ViTForImageClassification (a bare ViTModel has no prefix).
// A table, one role per line (clang-format would put each field on its own).
// clang-format off
enum Role {
  kCls, kPosition, kPatchW, kPatchB, kMaskToken,
  kNormBeforeW, kNormBeforeB, kNormAfterW, kNormAfterB,
  kQW, kQB, kKW, kKB, kVW, kVB, kOW, kOB, kFc1W, kFc1B, kFc2W, kFc2B,  // weight, bias per projection
  kFinalNormW, kFinalNormB, kPoolerW, kPoolerB, kClassifierW, kClassifierB,
};
using A = Axis;
const RoleTable& vit_roles() {
  constexpr auto always = Presence::always;
  static const RoleTable table({
      {"embeddings.cls_token", "embedding", {A::one, A::one, A::hidden}, always, Fold::none, Use::vector},
      {"embeddings.position_embeddings", "embedding", {A::one, A::positions, A::hidden}, always, Fold::none, Use::vector},
      {"embeddings.patch_embeddings.projection.weight", "embedding", {A::hidden, A::channels, A::patch, A::patch}},
      {"embeddings.patch_embeddings.projection.bias", "embedding", {A::hidden}, always, Fold::none, Use::matrix, Init::zeros},
      {"embeddings.mask_token", "embedding", {A::one, A::one, A::hidden}, Presence::buffer},
      {"encoder.layer.%d.layernorm_before.weight", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::ones},
      {"encoder.layer.%d.layernorm_before.bias", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::zeros},
      {"encoder.layer.%d.layernorm_after.weight", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::ones},
      {"encoder.layer.%d.layernorm_after.bias", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::zeros},
      {"encoder.layer.%d.attention.attention.query.weight", "attention", {A::q, A::hidden}},
      {"encoder.layer.%d.attention.attention.query.bias", "attention", {A::q}, Presence::qkv_bias, Fold::none, Use::matrix, Init::zeros},
      {"encoder.layer.%d.attention.attention.key.weight", "attention", {A::q, A::hidden}},
      {"encoder.layer.%d.attention.attention.key.bias", "attention", {A::q}, Presence::qkv_bias, Fold::none, Use::matrix, Init::zeros},
      {"encoder.layer.%d.attention.attention.value.weight", "attention", {A::q, A::hidden}},
      {"encoder.layer.%d.attention.attention.value.bias", "attention", {A::q}, Presence::qkv_bias, Fold::none, Use::matrix, Init::zeros},
      {"encoder.layer.%d.attention.output.dense.weight", "attention", {A::hidden, A::q}, always, Fold::attention_out},
      {"encoder.layer.%d.attention.output.dense.bias", "attention", {A::hidden}, Presence::out_bias, Fold::attention_out, Use::matrix, Init::zeros},
      {"encoder.layer.%d.intermediate.dense.weight", "mlp", {A::ffn, A::hidden}},
      {"encoder.layer.%d.intermediate.dense.bias", "mlp", {A::ffn}, Presence::mlp_bias, Fold::none, Use::matrix, Init::zeros},
      {"encoder.layer.%d.output.dense.weight", "mlp", {A::hidden, A::ffn}, always, Fold::mlp_out},
      {"encoder.layer.%d.output.dense.bias", "mlp", {A::hidden}, Presence::mlp_bias, Fold::mlp_out, Use::matrix, Init::zeros},
      {"layernorm.weight", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::ones},
      {"layernorm.bias", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::zeros},
      // A bare ViTModel saved with its pooler: pooler_output_size outputs (kept), the hidden inputs pruned.
      {"pooler.dense.weight", "head", {A::pooled, A::hidden}, Presence::pooler},
      {"pooler.dense.bias", "head", {A::pooled}, Presence::pooler, Fold::none, Use::matrix, Init::zeros},
      {"classifier.weight", "head", {A::labels, A::hidden}, Presence::classifier, Fold::none, Use::matrix, Init::normal, false},
      {"classifier.bias", "head", {A::labels}, Presence::classifier, Fold::none, Use::matrix, Init::zeros, false},
  });
  return table;
}
// clang-format on
enum Proj { kQ, kK, kV, kO, kFc1, kFc2 };  // VitLayer::proj

struct Affine {
  at::Tensor weight, bias;
};

struct VitLayer {
  Affine norm_before, norm_after, proj[6];
};

class VitModel final : public Model {
 public:
  VitModel(const ArchSummary& arch, const nlohmann::json& config, const std::filesystem::path& file,
           const HfCheckpoint& ckpt, const LoadOptions& options, const std::string& prefix)
      : arch_(arch) {
    eps_ = cf::number(config, "layer_norm_eps", file, 1e-12);
    const std::string act = cf::string(config, "hidden_act", file, "gelu");
    if (act != "gelu")
      throw CheckpointError("'" + file.string() + "': hidden_act '" + act + "' is not supported (supported: gelu)");
    const int64_t rgb = 3;
    channels_ = cf::integer(config, "num_channels", file, &rgb);

    // Norm parameters stay in the compute dtype; matrix-product weights may be kept in fp32 (WeightLoader::matrix).
    WeightLoader loader(ckpt, options);
    RoleLoader w(loader, vit_roles(), arch, prefix);
    dtype_ = loader.compute_dtype(vit_roles().name(kCls, -1, w.prefix()));
    cls_token_ = w(kCls);
    position_ = w(kPosition);
    patch_ = {w(kPatchW), w(kPatchB)};
    for (int64_t i = 0; i < arch.layers; ++i) {
      VitLayer l;
      l.norm_before = {w(kNormBeforeW, i), w(kNormBeforeB, i)};
      l.norm_after = {w(kNormAfterW, i), w(kNormAfterB, i)};
      for (int k = 0; k < 6; ++k) l.proj[k] = {w(kQW + 2 * k, i), w(kQW + 2 * k + 1, i)};
      layers_.push_back(std::move(l));
    }
    final_norm_ = {w(kFinalNormW), w(kFinalNormB)};
    classifier_ = {w(kClassifierW), w(kClassifierB)};
    pooler_ = {w(kPoolerW), w(kPoolerB)};
    w.finish();
    weights_ = loader.loaded();
  }

  at::Tensor features(const Batch& batch, const GateValues* gates) const override {
    return encode(batch, gates).select(1, 0);
  }
  at::Tensor head(const at::Tensor& features) const override {
    if (!classifier_.weight.defined())
      throw CheckpointError(arch_.architecture + " has no classifier: its outputs are last_hidden_state" +
                            std::string(pooler_.weight.defined() ? " and pooler_output" : ""));
    return layers::linear(features, classifier_.weight, classifier_.bias);
  }

  std::vector<std::pair<std::string, at::Tensor>> outputs(const Batch& batch, const GateValues* gates) const override {
    if (classifier_.weight.defined()) return {{"logits", logits(batch, gates)}};
    const at::Tensor x = encode(batch, gates);
    std::vector<std::pair<std::string, at::Tensor>> out{{"last_hidden_state", x}};
    if (pooler_.weight.defined())
      out.emplace_back("pooler_output", at::tanh(layers::linear(x.select(1, 0), pooler_.weight, pooler_.bias)));
    return out;
  }

  GateShape gate_shape() const override { return {arch_.layers, arch_.heads, arch_.ffn, arch_.hidden}; }
  at::ScalarType dtype() const override { return dtype_; }

 private:
  at::Tensor encode(const Batch& batch, const GateValues* gates) const {
    const at::Tensor& pixels = batch.pixel_values;
    if (!pixels.defined() || pixels.dim() != 4 || pixels.size(1) != channels_ || pixels.size(2) != arch_.image_size ||
        pixels.size(3) != arch_.image_size)
      throw DataError("pixel_values has shape " +
                      (pixels.defined() ? c10::str(pixels.sizes()) : std::string("(none)")) +
                      ", the model expects [batch, " + std::to_string(channels_) + ", " +
                      std::to_string(arch_.image_size) + ", " + std::to_string(arch_.image_size) + "]");
    const int64_t B = pixels.size(0);
    const at::Tensor hidden_gate = gates ? gates->hidden : at::Tensor();
    // The patch embedding is a convolution with stride = kernel = patch, run in its weight's dtype.
    at::Tensor x = at::conv2d(pixels.to(dtype_).to(patch_.weight.scalar_type()), patch_.weight, patch_.bias,
                              at::IntArrayRef{arch_.patch_size, arch_.patch_size})
                       .to(dtype_)
                       .flatten(2)
                       .transpose(1, 2);
    x = at::cat({cls_token_.expand({B, -1, -1}), x}, 1) + position_;
    x = layers::gate_last_dim(x, hidden_gate);
    const int64_t T = x.size(1);
    ActivationImportance* imp = gates ? gates->importance : nullptr;
    if (imp) imp->tokens += B * T;
    const double scale = 1.0 / std::sqrt(static_cast<double>(arch_.head_dim));
    auto linear = [](const at::Tensor& t, const Affine& a) { return layers::linear(t, a.weight, a.bias); };
    for (int64_t i = 0; i < arch_.layers; ++i) {
      const VitLayer& l = layers_[static_cast<size_t>(i)];
      const at::Tensor layer_gate = gates && gates->layers.defined() ? gates->layers[i] : at::Tensor();
      const at::Tensor block_in = x;
      at::Tensor hs = layers::layer_norm(x, l.norm_before.weight, l.norm_before.bias, eps_, hidden_gate);
      if (imp && imp->hidden.defined()) imp->hidden += hs.detach().abs().sum(at::IntArrayRef{0, 1}).to(at::kFloat);
      auto heads = [&](const Affine& a) {
        return linear(hs, a).view({B, T, arch_.heads, arch_.head_dim}).transpose(1, 2);
      };
      at::Tensor a = at::scaled_dot_product_attention(heads(l.proj[kQ]), heads(l.proj[kK]), heads(l.proj[kV]),
                                                      std::nullopt, 0.0, false, scale);
      if (gates && gates->heads.defined()) a = a * gates->heads[i].to(dtype_).view({1, arch_.heads, 1, 1});
      if (imp && imp->heads.defined())
        imp->heads[i] += a.detach().abs().to(at::kFloat).mean(-1).sum(at::IntArrayRef{0, 2});
      a = a.transpose(1, 2).reshape({B, T, arch_.heads * arch_.head_dim});
      at::Tensor o = linear(a, l.proj[kO]);
      if (gates && gates->attn_out.defined()) o = o * gates->attn_out[i].to(dtype_);
      x = x + layers::gate_branch(layers::gate_last_dim(o, hidden_gate), layer_gate);

      hs = layers::layer_norm(x, l.norm_after.weight, l.norm_after.bias, eps_, hidden_gate);
      if (imp && imp->hidden.defined()) imp->hidden += hs.detach().abs().sum(at::IntArrayRef{0, 1}).to(at::kFloat);
      at::Tensor m = at::gelu(linear(hs, l.proj[kFc1]));
      if (gates && gates->ffn.defined()) m = m * gates->ffn[i].to(dtype_);
      if (imp && imp->ffn.defined()) imp->ffn[i] += m.detach().abs().to(at::kFloat).sum(at::IntArrayRef{0, 1});
      at::Tensor d = linear(m, l.proj[kFc2]);
      if (gates && gates->mlp_out.defined()) d = d * gates->mlp_out[i].to(dtype_);
      x = x + layers::gate_branch(layers::gate_last_dim(d, hidden_gate), layer_gate);
      if (imp) layers::add_block_influence(imp->layers.defined() ? imp->layers[i] : at::Tensor(), block_in, x);
    }
    return layers::layer_norm(x, final_norm_.weight, final_norm_.bias, eps_, hidden_gate);
  }

  ArchSummary arch_;
  at::ScalarType dtype_ = at::kFloat;
  double eps_ = 1e-12;
  int64_t channels_ = 3;
  at::Tensor cls_token_, position_;
  Affine patch_, final_norm_, classifier_, pooler_;
  std::vector<VitLayer> layers_;
};

}  // namespace

ArchSummary VitAdapter::summarize(const nlohmann::json& config, const std::filesystem::path& file) const {
  return summarize_vit_config(config, file);
}

ArchSummary VitAdapter::summarize_checkpoint(const HfCheckpoint& ckpt) const {
  ArchSummary s = summarize(ckpt.config(), ckpt.dir() / "config.json");
  s.pooler = ckpt.contains(vit_roles().name(kPoolerW, -1, weight_prefix(ckpt)));
  return s;
}

ShapeTraits VitAdapter::traits(const ArchSummary& a) const {
  ShapeTraits t;
  t.output = ModelOutput::sample_logits;
  t.kv_groups = false;       // every head has its own key and value
  t.hidden_is_heads = true;  // hidden_size = heads x head size
  t.hidden_multiple_of_heads = true;
  t.rope = false;
  t.causal = false;
  t.drop_layers = true;  // num_hidden_layers is free; no per-layer setting but layer_types
  t.mlp_matrices = 2;    // fc1 (intermediate.dense), fc2 (output.dense)
  t.qkv_bias = a.qkv_bias;
  t.out_bias = t.mlp_in_bias = t.mlp_out_bias = true;
  t.norm_vectors = 4;  // layernorm_before, layernorm_after (weight and bias)
  const int64_t grid = a.image_size / a.patch_size, patch_in = a.channels * a.patch_size * a.patch_size;
  t.tokens_per_sample = grid * grid + 1;  // patches + CLS
  // Patch projection (+ bias), CLS token, position embeddings, final LayerNorm.
  t.outer_h1 = static_cast<double>(patch_in + 1 + 1 + (grid * grid + 1) + 2);
  t.embedding_h1 = static_cast<double>(1 + grid * grid + 1);  // CLS token, position embeddings
  t.before.push_back({1, -1, patch_in, 0});  // the patch embedding as a matrix product, over the patches
  if (a.num_labels > 0) {
    t.outer_h1 += static_cast<double>(a.num_labels);
    t.outer_h0 += static_cast<double>(a.num_labels);
    t.after.push_back({0, 1, 0, a.num_labels});  // classifier on the CLS token
  }
  if (a.pooler) {
    t.outer_h2 += 1;
    t.outer_h1 += 1;
    t.after.push_back({0, 1, 0, 0});  // pooler dense on the CLS token
  }
  return t;
}

std::unique_ptr<Model> VitAdapter::load(const HfCheckpoint& ckpt, const LoadOptions& options) const {
  const auto file = ckpt.dir() / "config.json";
  return std::make_unique<VitModel>(summarize(ckpt.config(), file), ckpt.config(), file, ckpt, options,
                                    weight_prefix(ckpt));
}

}  // namespace hawada

namespace hawada {

const RoleTable& VitAdapter::roles() const { return vit_roles(); }

std::vector<std::string> VitAdapter::weight_prefixes() const { return {"vit.", ""}; }

nlohmann::json VitAdapter::pruned_config(const nlohmann::json& config, const Plan& plan) const {
  nlohmann::json c = ModelAdapter::pruned_config(config, plan);
  // A pooler keeps its outputs (pooler_output_size, which transformers defaults to hidden_size): said
  // explicitly once hidden is pruned.
  auto pooled = config.find("pooler_output_size");
  if (plan.chosen.shape.hidden != plan.dense.shape.hidden && (pooled == config.end() || pooled->is_null()))
    c["pooler_output_size"] = plan.dense.shape.hidden;
  return c;
}

}  // namespace hawada
