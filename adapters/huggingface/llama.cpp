#include "adapters/huggingface/llama.h"

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

// LlamaForCausalLM's weights (and the LLaMA family's: Qwen2's q/k/v biases, Qwen3's per-head q/k
// norms), in one table: names, axes, folds, presence, kinds.
// A table, one role per line (clang-format would put each field on its own).
// clang-format off
enum Role {
  kEmbed, kFinalNorm, kLmHead, kAttnNorm, kMlpNorm,
  kQW, kQB, kKW, kKB, kVW, kVB, kOW, kOB, kGateW, kGateB, kUpW, kUpB, kDownW, kDownB,  // weight, bias per projection
  kQNorm, kKNorm, kInvFreq,
};
using A = Axis;
const RoleTable& llama_roles() {
  static const RoleTable table({
      {"model.embed_tokens.weight", "embedding", {A::vocab, A::hidden}},
      {"model.norm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::ones},
      {"lm_head.weight", "head", {A::vocab, A::hidden}, Presence::untied_head},
      {"model.layers.%d.input_layernorm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::ones},
      {"model.layers.%d.post_attention_layernorm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::ones},
      {"model.layers.%d.self_attn.q_proj.weight", "attention", {A::q, A::hidden}},
      {"model.layers.%d.self_attn.q_proj.bias", "attention", {A::q}, Presence::qkv_bias, Fold::none, Use::matrix, Init::zeros},
      {"model.layers.%d.self_attn.k_proj.weight", "attention", {A::kv, A::hidden}},
      {"model.layers.%d.self_attn.k_proj.bias", "attention", {A::kv}, Presence::qkv_bias, Fold::none, Use::matrix, Init::zeros},
      {"model.layers.%d.self_attn.v_proj.weight", "attention", {A::kv, A::hidden}},
      {"model.layers.%d.self_attn.v_proj.bias", "attention", {A::kv}, Presence::qkv_bias, Fold::none, Use::matrix, Init::zeros},
      {"model.layers.%d.self_attn.o_proj.weight", "attention", {A::hidden, A::q}, Presence::always, Fold::attention_out},
      {"model.layers.%d.self_attn.o_proj.bias", "attention", {A::hidden}, Presence::out_bias, Fold::attention_out, Use::matrix, Init::zeros},
      {"model.layers.%d.mlp.gate_proj.weight", "mlp", {A::ffn, A::hidden}},
      {"model.layers.%d.mlp.gate_proj.bias", "mlp", {A::ffn}, Presence::mlp_bias, Fold::none, Use::matrix, Init::zeros},
      {"model.layers.%d.mlp.up_proj.weight", "mlp", {A::ffn, A::hidden}},
      {"model.layers.%d.mlp.up_proj.bias", "mlp", {A::ffn}, Presence::mlp_bias, Fold::none, Use::matrix, Init::zeros},
      {"model.layers.%d.mlp.down_proj.weight", "mlp", {A::hidden, A::ffn}, Presence::always, Fold::mlp_out},
      {"model.layers.%d.mlp.down_proj.bias", "mlp", {A::hidden}, Presence::mlp_bias, Fold::mlp_out, Use::matrix, Init::zeros},
      // Qwen3: per-head RMSNorm of queries and keys ([head_dim], shared by the heads).
      {"model.layers.%d.self_attn.q_norm.weight", "attention", {A::head_dim}, Presence::qk_norm, Fold::none, Use::vector, Init::ones},
      {"model.layers.%d.self_attn.k_norm.weight", "attention", {A::head_dim}, Presence::qk_norm, Fold::none, Use::vector, Init::ones},
      // A buffer older transformers versions saved; recomputed, never read.
      {"model.layers.%d.self_attn.rotary_emb.inv_freq", "attention", {}, Presence::buffer},
  });
  return table;
}
// clang-format on
enum Proj { kQ, kK, kV, kO, kGate, kUp, kDown };

struct Linear {
  at::Tensor weight, bias;
  at::Tensor operator()(const at::Tensor& x) const { return layers::linear(x, weight, bias); }
};

struct LlamaLayer {
  at::Tensor attn_norm, mlp_norm, q_norm, k_norm;
  Linear proj[7];
};

// RoPE settings from v5 `rope_parameters` or the legacy `rope_scaling` + `rope_theta`.
struct Rope {
  std::string type = "default";
  double theta = 10000.0;
  double factor = 1, low_freq_factor = 1, high_freq_factor = 4, original_max_positions = 8192;
};

Rope read_rope(const nlohmann::json& config, const std::filesystem::path& file) {
  Rope r;
  r.theta = cf::number(config, "rope_theta", file, r.theta);
  auto positive = [&](double v, const char* key) {
    if (!(v > 0) || !std::isfinite(v))
      throw CheckpointError("'" + file.string() + "': key '" + key + "': expected a positive finite number, got " +
                            std::to_string(v));
  };
  const nlohmann::json* p = nullptr;
  if (auto it = config.find("rope_parameters"); it != config.end() && it->is_object())
    p = &*it;
  else if (auto it2 = config.find("rope_scaling"); it2 != config.end() && it2->is_object())
    p = &*it2;
  if (!p) {
    positive(r.theta, "rope_theta");
    return r;
  }
  r.theta = cf::number(*p, "rope_theta", file, r.theta);
  r.type = cf::string(*p, "rope_type", file, cf::string(*p, "type", file, "default"));
  if (r.type == "default") {
    positive(r.theta, "rope_theta");
    return r;
  }
  if (r.type != "llama3")
    throw CheckpointError("'" + file.string() + "': rope type '" + r.type +
                          "' is not supported (supported: default, llama3)");
  const double max_pos = cf::number(config, "max_position_embeddings", file, 8192);
  r.factor = cf::number(*p, "factor", file, 8);
  r.low_freq_factor = cf::number(*p, "low_freq_factor", file, 1);
  r.high_freq_factor = cf::number(*p, "high_freq_factor", file, 4);
  r.original_max_positions = cf::number(*p, "original_max_position_embeddings", file, max_pos);
  positive(r.theta, "rope_theta");
  positive(r.factor, "rope_scaling.factor");
  positive(r.original_max_positions, "original_max_position_embeddings");
  if (!(r.high_freq_factor > r.low_freq_factor))
    throw CheckpointError("'" + file.string() + "': high_freq_factor must exceed low_freq_factor");
  return r;
}

// inv_freq exactly as transformers computes it (fp32, same operation order).
at::Tensor inverse_frequencies(const Rope& r, int64_t head_dim) {
  at::Tensor exponent =
      at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / static_cast<double>(head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(r.theta, exponent);
  if (r.type != "llama3") return inv_freq;
  const double low_wavelen = r.original_max_positions / r.low_freq_factor;
  const double high_wavelen = r.original_max_positions / r.high_freq_factor;
  at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / r.factor, inv_freq);
  at::Tensor smooth =
      (r.original_max_positions / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
  at::Tensor medium = at::logical_not(wavelen < high_wavelen) & at::logical_not(wavelen > low_wavelen);
  return at::where(medium, smoothed, scaled);
}

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

class LlamaModel final : public Model {
 public:
  LlamaModel(const ArchSummary& arch, const nlohmann::json& config, const std::filesystem::path& file,
             const HfCheckpoint& ckpt, const LoadOptions& options)
      : arch_(arch) {
    eps_ = cf::number(config, "rms_norm_eps", file, 1e-6);
    const std::string act = cf::string(config, "hidden_act", file, "silu");
    if (act != "silu")
      throw CheckpointError("'" + file.string() + "': hidden_act '" + act + "' is not supported (supported: silu)");
    const Rope rope = read_rope(config, file);

    WeightLoader loader(ckpt, options);
    RoleLoader w(loader, llama_roles(), arch);
    dtype_ = loader.compute_dtype(llama_roles().name(kEmbed));
    embed_ = w(kEmbed);
    final_norm_ = w(kFinalNorm);
    lm_head_ = arch.tied_embeddings ? embed_ : w(kLmHead);
    for (int64_t i = 0; i < arch.layers; ++i) {
      LlamaLayer layer;
      layer.attn_norm = w(kAttnNorm, i);
      layer.mlp_norm = w(kMlpNorm, i);
      for (int p = 0; p < 7; ++p) {
        layer.proj[p].weight = w(kQW + 2 * p, i);
        layer.proj[p].bias = w(kQW + 2 * p + 1, i);
      }
      layer.q_norm = w(kQNorm, i);
      layer.k_norm = w(kKNorm, i);
      layers_.push_back(std::move(layer));
    }
    w.finish();
    weights_ = loader.loaded();
    // Sized by head_dim: only now that every weight agreed with config.json.
    inv_freq_ = inverse_frequencies(rope, arch.head_dim).to(options.device);
  }

  at::Tensor features(const Batch& batch, const GateValues* gates) const override {
    return hidden_states(batch, gates);
  }
  at::Tensor decode(const at::Tensor& ids, KvCache& cache) const override {
    if (cache.keys.empty())
      cache.keys.resize(static_cast<size_t>(arch_.layers)), cache.values.resize(static_cast<size_t>(arch_.layers));
    HAWADA_ASSERT(static_cast<int64_t>(cache.keys.size()) == arch_.layers, "a KV cache of this model");
    if (arch_.sliding_window > 0 && cache.length + ids.size(1) > arch_.sliding_window)
      throw DataError("decoding past the sliding_window " + std::to_string(arch_.sliding_window) + " of this " +
                      arch_.model_type + " model is not supported");
    Batch b;
    b.input_ids = ids;
    at::Tensor out = hidden_states(b, nullptr, &cache);
    cache.length += ids.size(1);
    return out;
  }
  at::Tensor head(const at::Tensor& features) const override { return layers::linear(features, lm_head_); }

  GateShape gate_shape() const override { return {arch_.layers, arch_.heads, arch_.ffn, arch_.hidden}; }
  at::ScalarType dtype() const override { return dtype_; }

 private:
  // With a cache: the tokens continue the cached ones (positions past ...), and their keys and values
  // are appended to it.
  at::Tensor hidden_states(const Batch& batch, const GateValues* gates, KvCache* cache = nullptr) const {
    const at::Tensor& ids = batch.input_ids;
    check_inputs(batch);
    const int64_t B = ids.size(0), L = ids.size(1);
    const int64_t past = cache ? cache->length : 0;
    const at::Tensor hidden_gate = gates ? gates->hidden : at::Tensor();

    // RoPE tables for positions 0..L-1 (transformers uses cache positions, not the padding mask).
    at::Tensor positions = at::arange(past, past + L, at::TensorOptions().dtype(at::kFloat).device(ids.device()));
    at::Tensor freqs = positions.unsqueeze(-1) * inv_freq_;
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    const at::Tensor cos = emb.cos().to(dtype_), sin = emb.sin().to(dtype_);

    at::Tensor mask;        // undefined: plain causal attention
    if (past > 0 && L > 1)  // new queries see every cached key and the new keys up to themselves
      mask = at::ones({L, past + L}, at::TensorOptions().dtype(at::kBool).device(ids.device())).tril(past);
    if (batch.attention_mask.defined()) {
      at::Tensor keys = batch.attention_mask.to(at::kBool);
      if (!keys.all().item<bool>()) {
        at::Tensor causal = at::ones({L, L}, at::TensorOptions().dtype(at::kBool).device(ids.device())).tril();
        mask = causal.unsqueeze(0) & keys.unsqueeze(1);
        // A padded query row that sees no key would give NaN and poison nothing but itself; let it see
        // itself so every value stays finite (its logits are meaningless either way).
        mask = mask | at::eye(L, at::TensorOptions().dtype(at::kBool).device(ids.device())).unsqueeze(0);
        mask = mask.unsqueeze(1);  // [B, 1, L, L]
      }
    }

    ActivationImportance* imp = gates ? gates->importance : nullptr;
    if (imp) imp->tokens += B * L;
    at::Tensor x = layers::gate_last_dim(layers::embedding(embed_, ids, dtype_), hidden_gate);
    const double scale = 1.0 / std::sqrt(static_cast<double>(arch_.head_dim));
    for (int64_t i = 0; i < arch_.layers; ++i) {
      const LlamaLayer& l = layers_[static_cast<size_t>(i)];
      const at::Tensor layer_gate = gates && gates->layers.defined() ? gates->layers[i] : at::Tensor();
      const at::Tensor block_in = x;
      at::Tensor hs = layers::rms_norm(x, l.attn_norm, eps_, hidden_gate);
      if (imp && imp->hidden.defined()) imp->hidden += hs.detach().abs().sum(at::IntArrayRef{0, 1}).to(at::kFloat);
      at::Tensor q = l.proj[kQ](hs).view({B, L, arch_.heads, arch_.head_dim});
      at::Tensor k = l.proj[kK](hs).view({B, L, arch_.kv_heads, arch_.head_dim});
      if (arch_.qk_norm) {
        q = layers::rms_norm(q, l.q_norm, eps_, at::Tensor());
        k = layers::rms_norm(k, l.k_norm, eps_, at::Tensor());
      }
      q = q.transpose(1, 2);
      k = k.transpose(1, 2);
      at::Tensor v = l.proj[kV](hs).view({B, L, arch_.kv_heads, arch_.head_dim}).transpose(1, 2);
      q = q * cos + rotate_half(q) * sin;
      k = k * cos + rotate_half(k) * sin;
      if (cache) {
        auto& ck = cache->keys[static_cast<size_t>(i)];
        auto& cv = cache->values[static_cast<size_t>(i)];
        if (past > 0) k = at::cat({ck, k}, 2), v = at::cat({cv, v}, 2);
        ck = k, cv = v;
      }
      // One new token after cached ones attends to all of them: no mask.
      const bool causal = !mask.defined() && !(past > 0 && L == 1);
      at::Tensor a = at::scaled_dot_product_attention(
          q, k, v, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt, 0.0, causal, scale,
          /*enable_gqa=*/arch_.kv_heads != arch_.heads);
      if (gates && gates->heads.defined()) a = a * gates->heads[i].to(dtype_).view({1, arch_.heads, 1, 1});
      if (imp && imp->heads.defined())
        imp->heads[i] += a.detach().abs().to(at::kFloat).mean(-1).sum(at::IntArrayRef{0, 2});
      a = a.transpose(1, 2).reshape({B, L, arch_.heads * arch_.head_dim});
      at::Tensor o = l.proj[kO](a);
      if (gates && gates->attn_out.defined()) o = o * gates->attn_out[i].to(dtype_);
      x = x + layers::gate_branch(layers::gate_last_dim(o, hidden_gate), layer_gate);

      hs = layers::rms_norm(x, l.mlp_norm, eps_, hidden_gate);
      if (imp && imp->hidden.defined()) imp->hidden += hs.detach().abs().sum(at::IntArrayRef{0, 1}).to(at::kFloat);
      at::Tensor m = at::silu(l.proj[kGate](hs)) * l.proj[kUp](hs);
      if (gates && gates->ffn.defined()) m = m * gates->ffn[i].to(dtype_);
      if (imp && imp->ffn.defined()) imp->ffn[i] += m.detach().abs().to(at::kFloat).sum(at::IntArrayRef{0, 1});
      at::Tensor d = l.proj[kDown](m);
      if (gates && gates->mlp_out.defined()) d = d * gates->mlp_out[i].to(dtype_);
      x = x + layers::gate_branch(layers::gate_last_dim(d, hidden_gate), layer_gate);
      if (imp) layers::add_block_influence(imp->layers.defined() ? imp->layers[i] : at::Tensor(), block_in, x);
    }
    return layers::rms_norm(x, final_norm_, eps_, hidden_gate);
  }

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
    // Within the window a sliding-window layer attends exactly like a full one; beyond it, it does not,
    // and we do not implement the window: refuse rather than compute another model.
    if (arch_.sliding_window > 0 && ids.size(1) > arch_.sliding_window)
      throw DataError(
          "sequence length " + std::to_string(ids.size(1)) + " exceeds the sliding_window " +
          std::to_string(arch_.sliding_window) + " of this " + arch_.model_type +
          " model (attention within the window is exact; beyond it is not supported): use data.seq_len <= " +
          std::to_string(arch_.sliding_window));
    const at::Tensor& m = batch.attention_mask;
    if (m.defined() && m.sizes() != ids.sizes())
      throw DataError("attention_mask has shape " + c10::str(m.sizes()) + ", input_ids has " + c10::str(ids.sizes()));
  }

  ArchSummary arch_;
  at::ScalarType dtype_ = at::kFloat;
  double eps_ = 1e-6;
  at::Tensor inv_freq_, embed_, final_norm_, lm_head_;
  std::vector<LlamaLayer> layers_;
};

}  // namespace

ArchSummary LlamaAdapter::summarize(const nlohmann::json& config, const std::filesystem::path& file) const {
  return summarize_llama_family_config(type_, config, file);
}

ShapeTraits LlamaAdapter::traits(const ArchSummary& a) const {
  ShapeTraits t;
  t.kv_groups = true;
  t.hidden_is_heads = false;
  t.hidden_multiple_of_heads = type_ == "llama";  // only LlamaConfig validates hidden_size % heads
  t.rope = true;
  t.causal = true;
  t.drop_layers = true;  // num_hidden_layers is free; no per-layer setting but layer_types
  t.mlp_matrices = 3;
  t.qkv_bias = a.qkv_bias;
  t.out_bias = a.out_bias;
  t.mlp_in_bias = t.mlp_out_bias = a.mlp_bias;
  t.qk_norm = a.qk_norm;
  t.norm_vectors = 2;  // input_layernorm, post_attention_layernorm (RMSNorm: a weight)
  // Embedding, the LM head unless tied, the final RMSNorm.
  t.outer_h1 = static_cast<double>(a.vocab_size * (a.tied_embeddings ? 1 : 2) + 1);
  t.embedding_h1 = static_cast<double>(a.vocab_size);  // the token embedding (a tied head with it)
  t.after.push_back({1, 0, 0, a.vocab_size});          // LM head over every token
  return t;
}

std::unique_ptr<Model> LlamaAdapter::load(const HfCheckpoint& ckpt, const LoadOptions& options) const {
  const auto file = ckpt.dir() / "config.json";
  return std::make_unique<LlamaModel>(summarize(ckpt.config(), file), ckpt.config(), file, ckpt, options);
}

}  // namespace hawada

namespace hawada {

const RoleTable& LlamaAdapter::roles() const { return llama_roles(); }

nlohmann::json LlamaAdapter::pruned_config(const nlohmann::json& config, const Plan& plan) const {
  nlohmann::json c = ModelAdapter::pruned_config(config, plan);
  c["num_key_value_heads"] = plan.chosen.shape.kv_heads;
  c["head_dim"] = plan.chosen.shape.head_dim;
  return c;
}

}  // namespace hawada
