#include "adapters/huggingface/vit.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "adapters/layers.h"
#include "adapters/prune.h"
#include "adapters/weights.h"
#include "core/io/checkpoint.h"
#include "core/base/errors.h"
#include "core/prune/slicing.h"

namespace hawada {
namespace {

namespace cf = config_field;

// Hugging Face weight names of ViT as save_pretrained writes them (transformers 4.x and 5.x alike),
// relative to the "vit." prefix of ViTForImageClassification (a bare ViTModel has no prefix).
struct VitNames {
  static constexpr const char* cls_token = "embeddings.cls_token";
  static constexpr const char* position = "embeddings.position_embeddings";
  static constexpr const char* patch = "embeddings.patch_embeddings.projection";
  static constexpr const char* mask_token = "embeddings.mask_token";
  static constexpr const char* norm_before = "encoder.layer.%d.layernorm_before";
  static constexpr const char* norm_after = "encoder.layer.%d.layernorm_after";
  static constexpr const char* proj[] = {"encoder.layer.%d.attention.attention.query",
                                         "encoder.layer.%d.attention.attention.key",
                                         "encoder.layer.%d.attention.attention.value",
                                         "encoder.layer.%d.attention.output.dense",
                                         "encoder.layer.%d.intermediate.dense", "encoder.layer.%d.output.dense"};
  static constexpr const char* final_norm = "layernorm";
  static constexpr const char* pooler = "pooler.dense";
  static constexpr const char* classifier = "classifier";  // no prefix
};
enum Proj { kQ, kK, kV, kO, kFc1, kFc2 };

struct Affine {
  at::Tensor weight, bias;
};

struct VitLayer {
  Affine norm_before, norm_after, proj[6];
};

class VitModel final : public Model {
 public:
  VitModel(const ArchSummary& arch, const nlohmann::json& config, const std::filesystem::path& file,
           const HfCheckpoint& ckpt, const LoadOptions& options)
      : arch_(arch) {
    eps_ = cf::number(config, "layer_norm_eps", file, 1e-12);
    const std::string act = cf::string(config, "hidden_act", file, "gelu");
    if (act != "gelu")
      throw CheckpointError("'" + file.string() + "': hidden_act '" + act + "' is not supported (supported: gelu)");
    const bool qkv_bias = arch.qkv_bias;
    const int64_t rgb = 3;
    channels_ = cf::integer(config, "num_channels", file, &rgb);

    WeightLoader w(ckpt, options);
    const std::string p = w.has(std::string("vit.") + VitNames::cls_token) ? "vit." : "";
    const int64_t h = arch.hidden, f = arch.ffn, grid = arch.image_size / arch.patch_size;
    // Norm parameters stay in the compute dtype; matrix-product weights may be kept in fp32 (WeightLoader::matrix).
    auto norm = [&](const std::string& base, int64_t n) {
      return Affine{w.get(base + ".weight", {n}), w.get(base + ".bias", {n})};
    };
    auto affine = [&](const std::string& base, std::vector<int64_t> shape, bool bias) {
      return Affine{w.matrix(base + ".weight", shape), w.matrix_if(bias, base + ".bias", {shape[0]})};
    };
    dtype_ = w.compute_dtype(p + VitNames::cls_token);
    cls_token_ = w.get(p + VitNames::cls_token, {1, 1, h});
    position_ = w.get(p + VitNames::position, {1, grid * grid + 1, h});
    patch_ = affine(p + VitNames::patch, {h, channels_, arch.patch_size, arch.patch_size}, true);
    if (w.has(p + VitNames::mask_token)) w.ignore(p + VitNames::mask_token);
    const std::vector<int64_t> shapes[6] = {{h, h}, {h, h}, {h, h}, {h, h}, {f, h}, {h, f}};
    for (int64_t i = 0; i < arch.layers; ++i) {
      VitLayer l;
      l.norm_before = norm(layer_name((p + VitNames::norm_before).c_str(), i), h);
      l.norm_after = norm(layer_name((p + VitNames::norm_after).c_str(), i), h);
      for (int k = 0; k < 6; ++k)
        l.proj[k] = affine(layer_name((p + VitNames::proj[k]).c_str(), i), shapes[k], k > kV || qkv_bias);
      layers_.push_back(std::move(l));
    }
    final_norm_ = norm(p + VitNames::final_norm, h);
    if (arch.architecture == "ViTForImageClassification") {
      classifier_ = affine(VitNames::classifier, {arch.num_labels, h}, true);
    } else if (w.has(p + VitNames::pooler + std::string(".weight"))) {
      const int64_t pooled = cf::integer(config, "pooler_output_size", file, &h);
      pooler_ = affine(p + VitNames::pooler, {pooled, h}, true);
    }
    w.finish();
    weights_ = w.loaded();
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
      throw DataError("pixel_values has shape " + (pixels.defined() ? c10::str(pixels.sizes()) : std::string("(none)")) +
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
      at::Tensor hs = layers::layer_norm(x, l.norm_before.weight, l.norm_before.bias, eps_, hidden_gate);
      if (imp && imp->hidden.defined()) imp->hidden += hs.detach().abs().sum(at::IntArrayRef{0, 1}).to(at::kFloat);
      auto heads = [&](const Affine& a) {
        return linear(hs, a).view({B, T, arch_.heads, arch_.head_dim}).transpose(1, 2);
      };
      at::Tensor a = at::scaled_dot_product_attention(heads(l.proj[kQ]), heads(l.proj[kK]), heads(l.proj[kV]),
                                                      std::nullopt, 0.0, false, scale);
      if (gates && gates->heads.defined()) a = a * gates->heads[i].to(dtype_).view({1, arch_.heads, 1, 1});
      if (imp && imp->heads.defined()) imp->heads[i] += a.detach().abs().to(at::kFloat).mean(-1).sum(at::IntArrayRef{0, 2});
      a = a.transpose(1, 2).reshape({B, T, arch_.heads * arch_.head_dim});
      at::Tensor o = linear(a, l.proj[kO]);
      if (gates && gates->attn_out.defined()) o = o * gates->attn_out[i].to(dtype_);
      x = x + layers::gate_last_dim(o, hidden_gate);

      hs = layers::layer_norm(x, l.norm_after.weight, l.norm_after.bias, eps_, hidden_gate);
      if (imp && imp->hidden.defined()) imp->hidden += hs.detach().abs().sum(at::IntArrayRef{0, 1}).to(at::kFloat);
      at::Tensor m = at::gelu(linear(hs, l.proj[kFc1]));
      if (gates && gates->ffn.defined()) m = m * gates->ffn[i].to(dtype_);
      if (imp && imp->ffn.defined()) imp->ffn[i] += m.detach().abs().to(at::kFloat).sum(at::IntArrayRef{0, 1});
      at::Tensor d = linear(m, l.proj[kFc2]);
      if (gates && gates->mlp_out.defined()) d = d * gates->mlp_out[i].to(dtype_);
      x = x + layers::gate_last_dim(d, hidden_gate);
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
  s.pooler = ckpt.contains(std::string("vit.") + VitNames::pooler + ".weight") ||
             ckpt.contains(std::string(VitNames::pooler) + ".weight");
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
  t.mlp_matrices = 2;  // fc1 (intermediate.dense), fc2 (output.dense)
  t.qkv_bias = a.qkv_bias;
  t.out_bias = t.mlp_in_bias = t.mlp_out_bias = true;
  t.norm_vectors = 4;  // layernorm_before, layernorm_after (weight and bias)
  const int64_t grid = a.image_size / a.patch_size, patch_in = a.channels * a.patch_size * a.patch_size;
  t.tokens_per_sample = grid * grid + 1;  // patches + CLS
  // Patch projection (+ bias), CLS token, position embeddings, final LayerNorm.
  t.outer_h1 = static_cast<double>(patch_in + 1 + 1 + (grid * grid + 1) + 2);
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
  return std::make_unique<VitModel>(summarize(ckpt.config(), file), ckpt.config(), file, ckpt, options);
}

}  // namespace hawada

namespace hawada {

std::vector<safetensors::NamedTensor> VitAdapter::prune_weights(const HfCheckpoint& ckpt, const Plan& plan,
                                                                const GateValues& folds, std::optional<at::ScalarType> dtype) const {
  const std::vector<int64_t>& hidden = plan.hidden;
  std::vector<safetensors::NamedTensor> out;
  for (const std::string& name : ckpt.tensor_names()) {
    const at::Tensor t = dtype ? ckpt.tensor(name).to(*dtype) : ckpt.tensor(name);
    const std::string n = name.rfind("vit.", 0) == 0 ? name.substr(4) : name;
    int layer = -1;
    char rest[128] = {0};
    if (std::sscanf(n.c_str(), "encoder.layer.%d.%127s", &layer, rest) == 2 && layer >= 0 &&
        layer < plan.dense.shape.layers) {
      const std::string r(rest);
      const LayerFolds lf = layer_folds(plan, folds, layer);
      const std::vector<int64_t>& q = lf.q;
      const std::vector<int64_t>& f = lf.ffn;
      const at::Tensor &head_scale = lf.head_scale, &ffn_scale = lf.ffn_scale, &attn_rows = lf.attn_rows,
                       &mlp_rows = lf.mlp_rows;
      at::Tensor s;
      if (r == "attention.attention.query.weight" || r == "attention.attention.key.weight" ||
          r == "attention.attention.value.weight")
        s = slice_linear(t, q, hidden);
      else if (r == "attention.attention.query.bias" || r == "attention.attention.key.bias" ||
               r == "attention.attention.value.bias")
        s = slice_dim(t, 0, q);
      else if (r == "attention.output.dense.weight") s = slice_linear(t, hidden, q, head_scale, attn_rows);
      else if (r == "attention.output.dense.bias") s = slice_vector(t, hidden, attn_rows);
      else if (r == "output.dense.bias") s = slice_vector(t, hidden, mlp_rows);
      else if (r == "intermediate.dense.weight") s = slice_linear(t, f, hidden);
      else if (r == "intermediate.dense.bias") s = slice_dim(t, 0, f);
      else if (r == "output.dense.weight") s = slice_linear(t, hidden, f, ffn_scale, mlp_rows);
      else if (r.rfind("layernorm_before.", 0) == 0 || r.rfind("layernorm_after.", 0) == 0) s = slice_norm(t, hidden);
      else throw CheckpointError("'" + ckpt.dir().string() + "': no pruning rule for tensor '" + name + "'");
      out.push_back({name, s});
      continue;
    }
    at::Tensor s;
    if (n == std::string(VitNames::cls_token) || n == VitNames::position || n == VitNames::mask_token ||
        n == "layernorm.weight" || n == "layernorm.bias")
      s = slice_norm(t, hidden);  // along the last (hidden) dimension
    else if (n == std::string(VitNames::patch) + ".weight" || n == std::string(VitNames::patch) + ".bias")
      s = slice_dim(t, 0, hidden);
    else if (n == std::string(VitNames::pooler) + ".weight") s = slice_linear(t, hidden, hidden);
    else if (n == std::string(VitNames::pooler) + ".bias") s = slice_dim(t, 0, hidden);
    else if (n == "classifier.weight") s = slice_linear(t, {}, hidden);
    else if (n == "classifier.bias") s = t.contiguous();
    else throw CheckpointError("'" + ckpt.dir().string() + "': no pruning rule for tensor '" + name + "'");
    out.push_back({name, s});
  }
  return out;
}

std::string VitAdapter::weight_kind(const std::string& full) const {
  const std::string name = full.rfind("vit.", 0) == 0 ? full.substr(4) : full;
  if (name.find(".attention.") != std::string::npos) return "attention";
  if (name.find(".intermediate.") != std::string::npos || name.find(".output.dense") != std::string::npos) return "mlp";
  if (name.find("layernorm") != std::string::npos) return "norm";
  if (name.rfind("embeddings.", 0) == 0) return "embedding";
  if (name.rfind("classifier.", 0) == 0 || name.rfind("pooler.", 0) == 0) return "head";
  return "other";
}

nlohmann::json VitAdapter::pruned_config(const nlohmann::json& config, const Plan& plan) const {
  nlohmann::json c = config;
  const ModelShape& s = plan.chosen.shape;
  c["hidden_size"] = s.hidden;
  c["num_attention_heads"] = s.heads;
  c["intermediate_size"] = s.ffn;
  return c;
}

}  // namespace hawada
