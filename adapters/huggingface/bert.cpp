#include "adapters/huggingface/bert.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "adapters/huggingface/bert_config.h"
#include "adapters/layers.h"
#include "adapters/weights.h"
#include "core/base/errors.h"
#include "core/format/plan.h"
#include "core/io/checkpoint.h"

namespace hawada {
namespace {

namespace cf = config_field;

// BertModel's weights as save_pretrained writes them, in one table.
// A table, one role per line (clang-format would put each field on its own).
// clang-format off
enum Role {
  kWord, kPosition, kTokenType, kEmbeddingNormW, kEmbeddingNormB, kPositionIds, kTokenTypeIds,
  kQW, kQB, kKW, kKB, kVW, kVB, kOW, kOB, kFc1W, kFc1B, kFc2W, kFc2B,  // weight, bias per projection
  kAttentionNormW, kAttentionNormB, kOutputNormW, kOutputNormB, kPoolerW, kPoolerB,
};
using A = Axis;
const RoleTable& bert_roles() {
  constexpr auto always = Presence::always;
  static const RoleTable table({
      {"embeddings.word_embeddings.weight", "embedding", {A::vocab, A::hidden}},
      {"embeddings.position_embeddings.weight", "embedding", {A::positions, A::hidden}, always, Fold::none, Use::vector},
      {"embeddings.token_type_embeddings.weight", "embedding", {A::token_types, A::hidden}, always, Fold::none, Use::vector},
      {"embeddings.LayerNorm.weight", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::ones},
      {"embeddings.LayerNorm.bias", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::zeros},
      // Buffers some checkpoints carry: not weights, kept as they are by an export.
      {"embeddings.position_ids", "embedding", {}, Presence::buffer},
      {"embeddings.token_type_ids", "embedding", {}, Presence::buffer},
      {"encoder.layer.%d.attention.self.query.weight", "attention", {A::q, A::hidden}},
      {"encoder.layer.%d.attention.self.query.bias", "attention", {A::q}, always, Fold::none, Use::matrix, Init::zeros},
      {"encoder.layer.%d.attention.self.key.weight", "attention", {A::q, A::hidden}},
      {"encoder.layer.%d.attention.self.key.bias", "attention", {A::q}, always, Fold::none, Use::matrix, Init::zeros},
      {"encoder.layer.%d.attention.self.value.weight", "attention", {A::q, A::hidden}},
      {"encoder.layer.%d.attention.self.value.bias", "attention", {A::q}, always, Fold::none, Use::matrix, Init::zeros},
      {"encoder.layer.%d.attention.output.dense.weight", "attention", {A::hidden, A::q}, always, Fold::attention_out},
      {"encoder.layer.%d.attention.output.dense.bias", "attention", {A::hidden}, always, Fold::attention_out, Use::matrix, Init::zeros},
      {"encoder.layer.%d.intermediate.dense.weight", "mlp", {A::ffn, A::hidden}},
      {"encoder.layer.%d.intermediate.dense.bias", "mlp", {A::ffn}, always, Fold::none, Use::matrix, Init::zeros},
      {"encoder.layer.%d.output.dense.weight", "mlp", {A::hidden, A::ffn}, always, Fold::mlp_out},
      {"encoder.layer.%d.output.dense.bias", "mlp", {A::hidden}, always, Fold::mlp_out, Use::matrix, Init::zeros},
      {"encoder.layer.%d.attention.output.LayerNorm.weight", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::ones},
      {"encoder.layer.%d.attention.output.LayerNorm.bias", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::zeros},
      {"encoder.layer.%d.output.LayerNorm.weight", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::ones},
      {"encoder.layer.%d.output.LayerNorm.bias", "norm", {A::hidden}, always, Fold::none, Use::vector, Init::zeros},
      // BertPooler: dense(hidden, hidden) on the CLS token, when saved.
      {"pooler.dense.weight", "head", {A::hidden, A::hidden}, Presence::pooler},
      {"pooler.dense.bias", "head", {A::hidden}, Presence::pooler, Fold::none, Use::matrix, Init::zeros},
  });
  return table;
}
// clang-format on
enum Proj { kQ, kK, kV, kO, kFc1, kFc2 };  // BertLayer::proj

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
    positions_ = arch.positions;
    WeightLoader loader(ckpt, options);
    RoleLoader w(loader, bert_roles(), arch);
    dtype_ = loader.compute_dtype(bert_roles().name(kWord));
    word_ = w(kWord);
    position_ = w(kPosition);
    token_type_ = w(kTokenType);
    embedding_norm_ = {w(kEmbeddingNormW), w(kEmbeddingNormB)};
    for (int64_t i = 0; i < arch.layers; ++i) {
      BertLayer l;
      for (int k = 0; k < 6; ++k) l.proj[k] = {w(kQW + 2 * k, i), w(kQW + 2 * k + 1, i)};
      l.attention_norm = {w(kAttentionNormW, i), w(kAttentionNormB, i)};
      l.output_norm = {w(kOutputNormW, i), w(kOutputNormB, i)};
      layers_.push_back(std::move(l));
    }
    pooler_ = {w(kPoolerW), w(kPoolerB)};
    w.finish();
    weights_ = loader.loaded();
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
        throw DataError("input_ids holds token id " + std::to_string(lo < 0 ? lo : hi) +
                        " outside the vocabulary [0, " + std::to_string(arch_.vocab_size) + ")");
    }
    if (ids.size(1) > positions_)
      throw DataError("sequence length " + std::to_string(ids.size(1)) + " exceeds max_position_embeddings " +
                      std::to_string(positions_) +
                      " of this BERT model: use data.seq_len <= " + std::to_string(positions_));
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
      const at::Tensor block_in = x;
      if (imp && imp->hidden.defined()) imp->hidden += x.detach().abs().sum(at::IntArrayRef{0, 1}).to(at::kFloat);
      auto heads = [&](const Affine& a) {
        return linear(x, a).view({B, T, arch_.heads, arch_.head_dim}).transpose(1, 2);
      };
      at::Tensor a =
          at::scaled_dot_product_attention(heads(l.proj[kQ]), heads(l.proj[kK]), heads(l.proj[kV]), mask, 0.0,
                                           /*is_causal=*/false, scale);
      if (gates && gates->heads.defined()) a = a * gates->heads[i].to(dtype_).view({1, arch_.heads, 1, 1});
      if (imp && imp->heads.defined())
        imp->heads[i] += a.detach().abs().to(at::kFloat).mean(-1).sum(at::IntArrayRef{0, 2});
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
      // Post-norm: a layer gate mixes the block's output with its input (0: the block is gone).
      x = layers::gate_block(block_in, x, gates && gates->layers.defined() ? gates->layers[i] : at::Tensor());
      if (imp) layers::add_block_influence(imp->layers.defined() ? imp->layers[i] : at::Tensor(), block_in, x);
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
  s.pooler = ckpt.contains(bert_roles().name(kPoolerW));
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
  t.drop_layers = true;  // num_hidden_layers is free; no per-layer setting but layer_types
  t.mlp_matrices = 2;    // intermediate.dense, output.dense
  t.qkv_bias = t.out_bias = t.mlp_in_bias = t.mlp_out_bias = true;
  t.norm_vectors = 4;  // attention.output.LayerNorm, output.LayerNorm (weight and bias)
  // Word, position and token-type tables and the embedding LayerNorm (lookups, no matrix products).
  t.outer_h1 = static_cast<double>(a.vocab_size + a.embedding_rows + 2);
  t.embedding_h1 = static_cast<double>(a.vocab_size + a.embedding_rows);  // word, position, token-type tables
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

const RoleTable& BertAdapter::roles() const { return bert_roles(); }

}  // namespace hawada
