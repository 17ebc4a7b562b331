#include "adapters/huggingface/bert.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "adapters/huggingface/bert_config.h"
#include "adapters/layers.h"
#include "adapters/prune.h"
#include "adapters/weights.h"
#include "core/io/checkpoint.h"
#include "core/base/errors.h"
#include "core/format/plan.h"
#include "core/prune/slicing.h"

namespace hawada {
namespace {

namespace cf = config_field;

// Hugging Face weight names of BertModel as save_pretrained writes them.
struct BertNames {
  static constexpr const char* word = "embeddings.word_embeddings.weight";
  static constexpr const char* position = "embeddings.position_embeddings.weight";
  static constexpr const char* token_type = "embeddings.token_type_embeddings.weight";
  static constexpr const char* embedding_norm = "embeddings.LayerNorm";
  // Buffers some checkpoints carry: not weights, kept as they are by an export.
  static constexpr const char* buffers[] = {"embeddings.position_ids", "embeddings.token_type_ids"};
  static constexpr const char* proj[] = {"encoder.layer.%d.attention.self.query", "encoder.layer.%d.attention.self.key",
                                         "encoder.layer.%d.attention.self.value", "encoder.layer.%d.attention.output.dense",
                                         "encoder.layer.%d.intermediate.dense", "encoder.layer.%d.output.dense"};
  static constexpr const char* attention_norm = "encoder.layer.%d.attention.output.LayerNorm";
  static constexpr const char* output_norm = "encoder.layer.%d.output.LayerNorm";
  static constexpr const char* pooler = "pooler.dense";
};
enum Proj { kQ, kK, kV, kO, kFc1, kFc2 };

struct Affine {
  at::Tensor weight, bias;
};

struct BertLayer {
  Affine proj[6], attention_norm, output_norm;
};

class BertModelImpl final : public Model {
 public:
  BertModelImpl(const ArchSummary& arch, const nlohmann::json& config, const std::filesystem::path& file,
                const HfCheckpoint& ckpt, const LoadOptions& options)
      : arch_(arch) {
    eps_ = cf::number(config, "layer_norm_eps", file, 1e-12);
    const int64_t positions = 512, types = 2;
    positions_ = cf::integer(config, "max_position_embeddings", file, &positions);
    const int64_t type_vocab = cf::integer(config, "type_vocab_size", file, &types);
    const int64_t h = arch.hidden, f = arch.ffn;
    WeightLoader w(ckpt, options);
    auto norm = [&](const std::string& base) { return Affine{w.get(base + ".weight", {h}), w.get(base + ".bias", {h})}; };
    auto affine = [&](const std::string& base, std::vector<int64_t> shape) {
      return Affine{w.matrix(base + ".weight", shape), w.matrix(base + ".bias", {shape[0]})};
    };
    dtype_ = w.compute_dtype(BertNames::word);
    word_ = w.matrix(BertNames::word, {arch.vocab_size, h});
    position_ = w.get(BertNames::position, {positions_, h});
    token_type_ = w.get(BertNames::token_type, {type_vocab, h});
    embedding_norm_ = norm(BertNames::embedding_norm);
    for (const char* b : BertNames::buffers)
      if (w.has(b)) w.ignore(b);
    const std::vector<int64_t> shapes[6] = {{h, h}, {h, h}, {h, h}, {h, h}, {f, h}, {h, f}};
    for (int64_t i = 0; i < arch.layers; ++i) {
      BertLayer l;
      for (int k = 0; k < 6; ++k) l.proj[k] = affine(layer_name(BertNames::proj[k], i), shapes[k]);
      l.attention_norm = norm(layer_name(BertNames::attention_norm, i));
      l.output_norm = norm(layer_name(BertNames::output_norm, i));
      layers_.push_back(std::move(l));
    }
    if (w.has(std::string(BertNames::pooler) + ".weight")) pooler_ = affine(BertNames::pooler, {h, h});
    w.finish();
    weights_ = w.loaded();
  }

  /// The last hidden states [B, L, hidden].
  at::Tensor features(const Batch& batch, const GateValues* gates) const override { return encode(batch, gates); }
  /// An encoder has no output head: what is distilled and evaluated are the hidden states themselves.
  at::Tensor head(const at::Tensor& features) const override { return features; }

  std::vector<std::pair<std::string, at::Tensor>> outputs(const Batch& batch, const GateValues* gates) const override {
    const at::Tensor x = encode(batch, gates);
    std::vector<std::pair<std::string, at::Tensor>> out{{"last_hidden_state", x}};
    if (pooler_.weight.defined())
      out.emplace_back("pooler_output", at::tanh(layers::linear(x.select(1, 0), pooler_.weight, pooler_.bias)));
    return out;
  }

  GateShape gate_shape() const override { return {arch_.layers, arch_.heads, arch_.ffn, arch_.hidden}; }
  at::ScalarType dtype() const override { return dtype_; }

 private:
  void check_inputs(const Batch& batch) const {
    const at::Tensor& ids = batch.input_ids;
    if (!ids.defined() || ids.dim() != 2 || ids.scalar_type() != at::kLong)
      throw DataError("input_ids must be int64 [batch, seq_len], got " +
                      (ids.defined() ? std::string(c10::toString(ids.scalar_type())) + " " + c10::str(ids.sizes())
                                     : std::string("nothing")));
    if (ids.numel() > 0) {
      const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
      if (lo < 0 || hi >= arch_.vocab_size)
        throw DataError("input_ids holds token id " + std::to_string(lo < 0 ? lo : hi) + " outside the vocabulary [0, " +
                        std::to_string(arch_.vocab_size) + ")");
    }
    if (ids.size(1) > positions_)
      throw DataError("sequence length " + std::to_string(ids.size(1)) + " exceeds max_position_embeddings " +
                      std::to_string(positions_) + " of this BERT model: use data.seq_len <= " + std::to_string(positions_));
    const at::Tensor& m = batch.attention_mask;
    if (m.defined() && m.sizes() != ids.sizes())
      throw DataError("attention_mask has shape " + c10::str(m.sizes()) + ", input_ids has " + c10::str(ids.sizes()));
  }

  at::Tensor encode(const Batch& batch, const GateValues* gates) const {
    check_inputs(batch);
    const at::Tensor& ids = batch.input_ids;
    const int64_t B = ids.size(0), T = ids.size(1);
    const at::Tensor hidden_gate = gates ? gates->hidden : at::Tensor();
    // Embeddings: words + absolute positions 0..T-1 + token type 0 (one segment), then LayerNorm
    // (transformers adds them in the weights' dtype).
    at::Tensor x = layers::embedding(word_, ids, dtype_) + token_type_[0] + position_.slice(0, 0, T).unsqueeze(0);
    // The norms take their statistics from the kept channels, which must be zero elsewhere.
    x = layers::layer_norm(layers::gate_last_dim(x, hidden_gate), embedding_norm_.weight, embedding_norm_.bias, eps_,
                           hidden_gate);
    // Padding: keys outside the mask are not attended to (every query still attends to the real keys).
    std::optional<at::Tensor> mask;
    if (batch.attention_mask.defined()) mask = batch.attention_mask.ne(0).view({B, 1, 1, T});
    ActivationImportance* imp = gates ? gates->importance : nullptr;
    if (imp) imp->tokens += B * T;
    const double scale = 1.0 / std::sqrt(static_cast<double>(arch_.head_dim));
    auto linear = [](const at::Tensor& t, const Affine& a) { return layers::linear(t, a.weight, a.bias); };
    for (int64_t i = 0; i < arch_.layers; ++i) {
      const BertLayer& l = layers_[static_cast<size_t>(i)];
      if (imp && imp->hidden.defined()) imp->hidden += x.detach().abs().sum(at::IntArrayRef{0, 1}).to(at::kFloat);
      auto heads = [&](const Affine& a) { return linear(x, a).view({B, T, arch_.heads, arch_.head_dim}).transpose(1, 2); };
      at::Tensor a = at::scaled_dot_product_attention(heads(l.proj[kQ]), heads(l.proj[kK]), heads(l.proj[kV]), mask, 0.0,
                                                      /*is_causal=*/false, scale);
      if (gates && gates->heads.defined()) a = a * gates->heads[i].to(dtype_).view({1, arch_.heads, 1, 1});
      if (imp && imp->heads.defined()) imp->heads[i] += a.detach().abs().to(at::kFloat).mean(-1).sum(at::IntArrayRef{0, 2});
      a = a.transpose(1, 2).reshape({B, T, arch_.heads * arch_.head_dim});
      at::Tensor o = linear(a, l.proj[kO]);
      if (gates && gates->attn_out.defined()) o = o * gates->attn_out[i].to(dtype_);
      // Post-LayerNorm: the residual sum is normalised (over the kept channels when hidden is gated).
      x = layers::layer_norm(layers::gate_last_dim(o, hidden_gate) + x, l.attention_norm.weight, l.attention_norm.bias,
                             eps_, hidden_gate);

      if (imp && imp->hidden.defined()) imp->hidden += x.detach().abs().sum(at::IntArrayRef{0, 1}).to(at::kFloat);
      at::Tensor m = at::gelu(linear(x, l.proj[kFc1]));
      if (gates && gates->ffn.defined()) m = m * gates->ffn[i].to(dtype_);
      if (imp && imp->ffn.defined()) imp->ffn[i] += m.detach().abs().to(at::kFloat).sum(at::IntArrayRef{0, 1});
      at::Tensor d = linear(m, l.proj[kFc2]);
      if (gates && gates->mlp_out.defined()) d = d * gates->mlp_out[i].to(dtype_);
      x = layers::layer_norm(layers::gate_last_dim(d, hidden_gate) + x, l.output_norm.weight, l.output_norm.bias, eps_,
                             hidden_gate);
    }
    return x;
  }

  ArchSummary arch_;
  at::ScalarType dtype_ = at::kFloat;
  double eps_ = 1e-12;
  int64_t positions_ = 512;
  at::Tensor word_, position_, token_type_;
  Affine embedding_norm_, pooler_;
  std::vector<BertLayer> layers_;
};

}  // namespace

ArchSummary BertAdapter::summarize(const nlohmann::json& config, const std::filesystem::path& file) const {
  return summarize_bert_config(config, file);
}

ArchSummary BertAdapter::summarize_checkpoint(const HfCheckpoint& ckpt) const {
  ArchSummary s = summarize(ckpt.config(), ckpt.dir() / "config.json");
  s.pooler = ckpt.contains(std::string(BertNames::pooler) + ".weight");
  return s;
}

ShapeTraits BertAdapter::traits(const ArchSummary& a) const {
  ShapeTraits t;
  t.output = ModelOutput::hidden_states;
  t.kv_groups = false;       // every head has its own key and value
  t.hidden_is_heads = true;  // BertConfig: attention head size = hidden_size / num_attention_heads
  t.hidden_multiple_of_heads = true;
  t.rope = false;  // learned absolute positions
  t.causal = false;
  t.mlp_matrices = 2;  // intermediate.dense, output.dense
  t.qkv_bias = t.out_bias = t.mlp_in_bias = t.mlp_out_bias = true;
  t.norm_vectors = 4;  // attention.output.LayerNorm, output.LayerNorm (weight and bias)
  // Word, position and token-type tables and the embedding LayerNorm (lookups, no matrix products).
  t.outer_h1 = static_cast<double>(a.vocab_size + a.embedding_rows + 2);
  if (a.pooler) {
    t.outer_h2 += 1;
    t.outer_h1 += 1;
    t.after.push_back({0, 1, 0, 0});  // pooler dense on the CLS token
  }
  return t;
}

std::unique_ptr<Model> BertAdapter::load(const HfCheckpoint& ckpt, const LoadOptions& options) const {
  const auto file = ckpt.dir() / "config.json";
  return std::make_unique<BertModelImpl>(summarize(ckpt.config(), file), ckpt.config(), file, ckpt, options);
}

std::vector<safetensors::NamedTensor> BertAdapter::prune_weights(const HfCheckpoint& ckpt, const Plan& plan,
                                                                 const GateValues& folds, std::optional<at::ScalarType> dtype) const {
  const std::vector<int64_t>& hidden = plan.hidden;
  std::vector<safetensors::NamedTensor> out;
  for (const std::string& name : ckpt.tensor_names()) {
    const at::Tensor stored = ckpt.tensor(name);
    const at::Tensor t = dtype && at::isFloatingType(stored.scalar_type()) ? stored.to(*dtype) : stored;
    int layer = -1;
    char rest[128] = {0};
    if (std::sscanf(name.c_str(), "encoder.layer.%d.%127s", &layer, rest) == 2 && layer >= 0 &&
        layer < plan.dense.shape.layers) {
      const std::string r(rest);
      const LayerFolds lf = layer_folds(plan, folds, layer);
      const std::vector<int64_t>& q = lf.q;
      const std::vector<int64_t>& f = lf.ffn;
      const at::Tensor &head_scale = lf.head_scale, &ffn_scale = lf.ffn_scale, &attn_rows = lf.attn_rows,
                       &mlp_rows = lf.mlp_rows;
      at::Tensor s;
      if (r == "attention.self.query.weight" || r == "attention.self.key.weight" || r == "attention.self.value.weight")
        s = slice_linear(t, q, hidden);
      else if (r == "attention.self.query.bias" || r == "attention.self.key.bias" || r == "attention.self.value.bias")
        s = slice_dim(t, 0, q);
      else if (r == "attention.output.dense.weight") s = slice_linear(t, hidden, q, head_scale, attn_rows);
      else if (r == "attention.output.dense.bias") s = slice_vector(t, hidden, attn_rows);
      else if (r == "intermediate.dense.weight") s = slice_linear(t, f, hidden);
      else if (r == "intermediate.dense.bias") s = slice_dim(t, 0, f);
      else if (r == "output.dense.weight") s = slice_linear(t, hidden, f, ffn_scale, mlp_rows);
      else if (r == "output.dense.bias") s = slice_vector(t, hidden, mlp_rows);
      else if (r.rfind("attention.output.LayerNorm.", 0) == 0 || r.rfind("output.LayerNorm.", 0) == 0) s = slice_norm(t, hidden);
      else throw CheckpointError("'" + ckpt.dir().string() + "': no pruning rule for tensor '" + name + "'");
      out.push_back({name, s});
      continue;
    }
    at::Tensor s;
    if (name == BertNames::word || name == BertNames::position || name == BertNames::token_type ||
        name.rfind(std::string(BertNames::embedding_norm) + ".", 0) == 0)
      s = slice_norm(t, hidden);  // along the last (hidden) dimension
    else if (name == BertNames::buffers[0] || name == BertNames::buffers[1]) s = t.contiguous();
    else if (name == std::string(BertNames::pooler) + ".weight") s = slice_linear(t, hidden, hidden);
    else if (name == std::string(BertNames::pooler) + ".bias") s = slice_dim(t, 0, hidden);
    else throw CheckpointError("'" + ckpt.dir().string() + "': no pruning rule for tensor '" + name + "'");
    out.push_back({name, s});
  }
  return out;
}

std::string BertAdapter::weight_kind(const std::string& name) const {
  if (name.find("LayerNorm") != std::string::npos) return "norm";
  if (name.find(".attention.") != std::string::npos) return "attention";
  if (name.find(".intermediate.") != std::string::npos || name.find(".output.dense") != std::string::npos) return "mlp";
  if (name.rfind("embeddings.", 0) == 0) return "embedding";
  if (name.rfind("pooler.", 0) == 0) return "head";
  return "other";
}

nlohmann::json BertAdapter::pruned_config(const nlohmann::json& config, const Plan& plan) const {
  nlohmann::json c = config;
  const ModelShape& s = plan.chosen.shape;
  c["hidden_size"] = s.hidden;
  c["num_attention_heads"] = s.heads;
  c["intermediate_size"] = s.ffn;
  return c;
}

}  // namespace hawada
