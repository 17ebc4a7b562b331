#include "adapters/huggingface/llama.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <tuple>
#include <utility>

#include "adapters/huggingface/llama_roles.h"
#include "adapters/layers.h"
#include "adapters/weights.h"
#include "core/base/errors.h"
#include "core/io/checkpoint.h"

namespace hawada {
namespace {

namespace cf = config_field;
using namespace llama_family;  // NOLINT: the role enums

enum Proj { kQ, kK, kV, kO, kGate, kUp, kDown };

struct Linear {
  at::Tensor weight, bias;
  at::Tensor operator()(const at::Tensor& x) const { return layers::linear(x, weight, bias); }
};

struct LlamaLayer {
  at::Tensor attn_norm, mlp_norm, q_norm, k_norm;
  at::Tensor post_attn_norm, post_mlp_norm;            // gemma3_text
  at::Tensor qkv, gate_up;                             // phi3: the fused matrices (proj[kQ, kK, kV, kGate, kUp] unused)
  at::Tensor qkv_bias, attn_norm_bias, mlp_norm_bias;  // gpt_neox (qkv: per head; proj[kUp], proj[kDown]: its MLP)
  Linear proj[7];
  bool sliding = false;  // attends within ArchSummary::sliding_window (gemma3_text)
};

// RoPE settings from v5 `rope_parameters` or the legacy `rope_scaling` + `rope_theta`.
struct Rope {
  std::string type = "default";
  double theta = 10000.0;
  double factor = 1, low_freq_factor = 1, high_freq_factor = 4, original_max_positions = 8192;
  double partial = 1.0;              // partial_rotary_factor: RoPE on the first int(head_dim x partial) channels
  std::vector<double> short_factor;  // longrope: per-frequency divisors within original_max_positions
  double attention_scaling = 1.0;    // longrope: cos and sin scale
};

// Phi-3's LongRoPE: short_factor divides the frequencies of sequences within original_max_position_embeddings
// (longer ones, which take long_factor, are refused by the model), cos and sin scale by attention_factor or
// sqrt(1 + ln(factor) / ln(original max)).
Rope read_longrope(const nlohmann::json& config, const nlohmann::json& p, const std::filesystem::path& file, Rope r) {
  r.type = "longrope";
  const double max_pos = cf::number(config, "max_position_embeddings", file, 4096);
  r.original_max_positions = cf::number(p, "original_max_position_embeddings", file,
                                        cf::number(config, "original_max_position_embeddings", file, max_pos));
  if (!(r.original_max_positions >= 1) || !(r.original_max_positions <= 1e9))
    throw CheckpointError("'" + file.string() + "': original_max_position_embeddings out of range");
  r.factor = cf::number(p, "factor", file, max_pos / r.original_max_positions);
  auto it = p.find("short_factor");
  if (it == p.end() || !it->is_array() || it->size() > 1u << 16)
    throw CheckpointError("'" + file.string() + "': longrope needs 'short_factor', a list of numbers");
  for (const auto& f : *it) {
    if (!f.is_number() || !(f.get<double>() > 0) || !std::isfinite(f.get<double>()))
      throw CheckpointError("'" + file.string() + "': 'short_factor' holds " + f.dump() +
                            " (expected positive numbers)");
    r.short_factor.push_back(f.get<double>());
  }
  const double fallback =
      r.factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(r.factor) / std::log(r.original_max_positions));
  auto af = p.find("attention_factor");
  r.attention_scaling = af == p.end() || af->is_null() ? fallback : cf::number(p, "attention_factor", file, fallback);
  if (!(r.attention_scaling > 0) || !std::isfinite(r.attention_scaling) || !std::isfinite(r.theta) || !(r.theta > 0))
    throw CheckpointError("'" + file.string() + "': longrope's attention_factor and rope_theta must be positive");
  return r;
}

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
  if (r.type == "linear") {
    r.factor = cf::number(*p, "factor", file, 1);
    positive(r.theta, "rope_theta");
    positive(r.factor, "rope_scaling.factor");
    return r;
  }
  if (r.type == "longrope" || r.type == "su") return read_longrope(config, *p, file, r);
  if (r.type != "llama3")
    throw CheckpointError("'" + file.string() + "': rope type '" + r.type +
                          "' is not supported (supported: default, linear, llama3, longrope)");
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

// inv_freq exactly as transformers computes it (fp32, same operation order), for the `dim` rotated channels.
at::Tensor inverse_frequencies(const Rope& r, int64_t dim) {
  at::Tensor exponent =
      at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / static_cast<double>(dim);
  if (r.type == "longrope")
    return 1.0 / (at::tensor(r.short_factor, at::kDouble).to(at::kFloat) * at::pow(r.theta, exponent));
  at::Tensor inv_freq = 1.0 / at::pow(r.theta, exponent);
  if (r.type == "linear") return inv_freq / r.factor;
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

// Gemma 3's RoPE of one layer kind: full layers take rope_theta (default 1e6) and rope_scaling, sliding
// ones rope_local_base_freq (default 1e4); v5 configs give both in rope_parameters by layer kind.
Rope gemma3_rope(const nlohmann::json& config, const std::filesystem::path& file, bool sliding) {
  nlohmann::json c = nlohmann::json::object();
  c["rope_theta"] =
      sliding ? cf::number(config, "rope_local_base_freq", file, 1e4) : cf::number(config, "rope_theta", file, 1e6);
  if (auto m = config.find("max_position_embeddings"); m != config.end()) c["max_position_embeddings"] = *m;
  if (auto rp = config.find("rope_parameters"); rp != config.end() && rp->is_object()) {
    if (auto t = rp->find(sliding ? "sliding_attention" : "full_attention"); t != rp->end() && t->is_object())
      c["rope_parameters"] = *t;
  } else if (auto rs = config.find("rope_scaling"); !sliding && rs != config.end() && rs->is_object()) {
    c["rope_scaling"] = *rs;
  }
  return read_rope(c, file);
}

// What a family member changes in LLaMA's forward, from config.json.
struct Variant {
  bool gemma = false;          // gemma3_text: (1 + w) RMSNorms, norms of the attention and MLP outputs, GeLU-tanh
  double embed_scale = 1.0;    // gemma3_text: sqrt(hidden_size), in the weights' dtype
  double attn_scale = 1.0;     // head_dim^-0.5, or query_pre_attn_scalar^-0.5
  double final_softcap = 0.0;  // final_logit_softcapping (0: none)
  bool exact_window = false;   // windowed layers masked beyond the window (else: refused beyond it)
  bool fused = false;          // phi3: qkv_proj and gate_up_proj
  bool neox = false;           // gpt_neox: LayerNorms with biases, per-head qkv, GeLU MLP of two matrices
  bool parallel = false;       // gpt_neox use_parallel_residual: x + attn(ln1(x)) + mlp(ln2(x))
  int64_t rotary_dim = 0;      // channels of a head RoPE rotates (phi3: int(head_dim x partial_rotary_factor))
};

// The rotated fraction of a head: rope_parameters' partial_rotary_factor, or the config's (gpt_neox: rotary_pct).
int64_t rotary_channels(const nlohmann::json& config, const std::filesystem::path& file, int64_t head_dim,
                        const char* key, double fallback) {
  double partial = cf::number(config, key, file, fallback);
  if (auto rp = config.find("rope_parameters"); rp != config.end() && rp->is_object())
    partial = cf::number(*rp, "partial_rotary_factor", file, partial);
  const auto dim = static_cast<int64_t>(static_cast<double>(head_dim) * partial);
  if (!(partial > 0 && partial <= 1) || dim < 2 || dim % 2 != 0)
    throw CheckpointError("'" + file.string() + "': a rotary fraction of " + std::to_string(partial) + " gives " +
                          std::to_string(dim) + " rotated channels of head_dim " + std::to_string(head_dim) +
                          " (expected an even count >= 2)");
  return dim;
}

// Phi-3: fused matrices, RoPE on int(head_dim x partial_rotary_factor) channels (rope_parameters' or the
// config's), every layer windowed when sliding_window is set (transformers masks them all).
void read_phi3(const nlohmann::json& config, const std::filesystem::path& file, const ArchSummary& arch, Variant& v) {
  v.fused = true;
  v.exact_window = true;
  v.rotary_dim = rotary_channels(config, file, arch.head_dim, "partial_rotary_factor", 1.0);
  const Rope r = read_rope(config, file);
  if (r.type == "longrope") {
    if (static_cast<int64_t>(r.short_factor.size()) != v.rotary_dim / 2)
      throw CheckpointError("'" + file.string() + "': longrope's short_factor has " +
                            std::to_string(r.short_factor.size()) + " entries, expected " +
                            std::to_string(v.rotary_dim / 2) + " (rotated channels / 2)");
  }
}

// GPT-NeoX: rotary_pct (default 0.25) of each head rotated, GeLU (exact), a parallel residual by default.
Variant read_neox(const nlohmann::json& config, const std::filesystem::path& file, const ArchSummary& arch, Variant v) {
  v.neox = true;
  v.parallel = cf::boolean(config, "use_parallel_residual", file, true);
  v.rotary_dim = rotary_channels(config, file, arch.head_dim, "rotary_pct", 0.25);
  const std::string act = cf::string(config, "hidden_act", file, "gelu");
  if (act != "gelu")
    throw CheckpointError("'" + file.string() + "': hidden_act '" + act + "' is not supported (supported: gelu)");
  return v;
}

Variant read_variant(const ArchSummary& arch, const nlohmann::json& config, const std::filesystem::path& file) {
  Variant v;
  v.gemma = arch.model_type == "gemma3_text";
  v.attn_scale = 1.0 / std::sqrt(static_cast<double>(arch.head_dim));
  v.rotary_dim = arch.head_dim;
  if (arch.model_type == "phi3") read_phi3(config, file, arch, v);
  if (arch.model_type == "gpt_neox") return read_neox(config, file, arch, v);
  const std::string act =
      cf::string(config, v.gemma ? "hidden_activation" : "hidden_act", file, v.gemma ? "gelu_pytorch_tanh" : "silu");
  const std::string want = v.gemma ? "gelu_pytorch_tanh" : "silu";
  if (act != want)
    throw CheckpointError("'" + file.string() + "': " + (v.gemma ? "hidden_activation" : "hidden_act") + " '" + act +
                          "' is not supported (supported: " + want + ")");
  if (!v.gemma) return v;
  v.embed_scale = std::sqrt(static_cast<double>(arch.hidden));
  v.attn_scale = std::pow(cf::number(config, "query_pre_attn_scalar", file, 256), -0.5);
  const auto softcap = [&](const char* key) {
    auto it = config.find(key);
    return it == config.end() || it->is_null() ? 0.0 : cf::number(config, key, file, 0.0);
  };
  // attn_logit_softcapping is not read: transformers' Gemma3Attention never applies it (it passes no softcap
  // to its attention functions), so a config that sets it computes uncapped scores there, and here.
  v.final_softcap = softcap("final_logit_softcapping");
  v.exact_window = true;
  return v;
}

// tanh(x / cap) * cap; x itself when cap is 0.
at::Tensor softcap(const at::Tensor& x, double cap) { return cap > 0 ? at::tanh(x / cap) * cap : x; }

// Which keys each query sees: undefined for plain causal attention (and for one new token after cached
// ones: all of them); else bool [L, past + L] or, with padding, [B, 1, L, L]. A windowed layer's query at
// position p sees keys p - window < k <= p. A padded query row that sees no key would give NaN; it sees
// itself so every value stays finite (its logits are meaningless either way).
at::Tensor attention_mask(const Batch& batch, int64_t past, int64_t L, int64_t window, const at::Device& dev) {
  const bool padded = batch.attention_mask.defined() && !batch.attention_mask.to(at::kBool).all().item<bool>();
  const bool windowed = window > 0 && past + L > window;
  if (!padded && !windowed && !(past > 0 && L > 1)) return {};
  const auto opts = at::TensorOptions().dtype(at::kLong).device(dev);
  const at::Tensor q = at::arange(past, past + L, opts).unsqueeze(1), k = at::arange(past + L, opts).unsqueeze(0);
  at::Tensor mask = k <= q;
  if (windowed) mask = mask & (q - k < window);
  if (!padded) return mask;
  mask = (mask.unsqueeze(0) & batch.attention_mask.to(dev).to(at::kBool).unsqueeze(1)) | (k == q).unsqueeze(0);
  return mask.unsqueeze(1);  // [B, 1, L, L]
}

class LlamaModel final : public Model {
 public:
  LlamaModel(const ArchSummary& arch, const nlohmann::json& config, const std::filesystem::path& file,
             const HfCheckpoint& ckpt, const LoadOptions& options)
      : arch_(arch), variant_(read_variant(arch, config, file)) {
    eps_ = arch.model_type == "gpt_neox"
               ? cf::number(config, "layer_norm_eps", file, 1e-5)
               : cf::number(config, "rms_norm_eps", file, arch.model_type == "phi3" ? 1e-5 : 1e-6);
    const std::vector<bool> sliding = sliding_layers(arch.model_type, config, file, arch.layers);
    const RoleTable& roles = llama_family::roles(arch.model_type);
    WeightLoader loader(ckpt, options);
    RoleLoader w(loader, roles, arch);
    dtype_ = loader.compute_dtype(roles.name(kEmbed));
    embed_ = w(kEmbed);
    final_norm_ = w(kFinalNorm);
    if (variant_.neox && !arch.tied_embeddings) lm_head_ = w(kLmHeadAlias);  // the other name, when stored
    if (!lm_head_.defined()) lm_head_ = arch.tied_embeddings ? embed_ : w(kLmHead);
    if (variant_.neox) final_norm_bias_ = w(kFinalNormB);
    for (int64_t i = 0; i < arch.layers; ++i) {
      LlamaLayer layer;
      layer.attn_norm = w(kAttnNorm, i);
      layer.mlp_norm = w(kMlpNorm, i);
      if (variant_.neox) {
        load_neox(w, i, layer);
      } else if (variant_.fused) {
        layer.qkv = w(kQkvW, i), layer.gate_up = w(kGateUpW, i);
        layer.proj[kO].weight = w(kFusedOW, i), layer.proj[kDown].weight = w(kFusedDownW, i);
      } else {
        for (int p = 0; p < 7; ++p) {
          layer.proj[p].weight = w(kQW + 2 * p, i);
          layer.proj[p].bias = w(kQW + 2 * p + 1, i);
        }
      }
      if (!variant_.fused && !variant_.neox) layer.q_norm = w(kQNorm, i), layer.k_norm = w(kKNorm, i);
      if (variant_.gemma) layer.post_attn_norm = w(kPostAttnNorm, i), layer.post_mlp_norm = w(kPostMlpNorm, i);
      layer.sliding = sliding[static_cast<size_t>(i)];
      layers_.push_back(std::move(layer));
    }
    w.finish();
    weights_ = loader.loaded();
    // Sized by head_dim: only now that every weight agreed with config.json.
    if (variant_.gemma) {
      inv_freq_ = inverse_frequencies(gemma3_rope(config, file, false), arch.head_dim).to(options.device);
      local_inv_freq_ = inverse_frequencies(gemma3_rope(config, file, true), arch.head_dim).to(options.device);
    } else {
      const Rope r = read_rope(rope_config(config), file);
      inv_freq_ = inverse_frequencies(r, variant_.rotary_dim).to(options.device);
      rope_scaling_ = r.attention_scaling;
    }
  }

  at::Tensor features(const Batch& batch, const GateValues* gates) const override {
    return hidden_states(batch, gates);
  }
  at::Tensor decode(const at::Tensor& ids, KvCache& cache) const override {
    if (cache.keys.empty())
      cache.keys.resize(static_cast<size_t>(arch_.layers)), cache.values.resize(static_cast<size_t>(arch_.layers));
    HAWADA_ASSERT(static_cast<int64_t>(cache.keys.size()) == arch_.layers, "a KV cache of this model");
    if (!variant_.exact_window && arch_.sliding_window > 0 && cache.length + ids.size(1) > arch_.sliding_window)
      throw DataError("decoding past the sliding_window " + std::to_string(arch_.sliding_window) + " of this " +
                      arch_.model_type + " model is not supported");
    check_positions(cache.length + ids.size(1));
    Batch b;
    b.input_ids = ids;
    at::Tensor out = hidden_states(b, nullptr, &cache);
    cache.length += ids.size(1);
    return out;
  }
  at::Tensor head(const at::Tensor& features) const override {
    return softcap(layers::linear(features, lm_head_), variant_.final_softcap);
  }

  GateShape gate_shape() const override { return {arch_.layers, arch_.heads, arch_.ffn, arch_.hidden}; }
  std::pair<Projection, Projection> output_projections(int64_t layer) const override {
    HAWADA_ASSERT(layer >= 0 && layer < arch_.layers, "a layer of this model");
    const LlamaLayer& l = layers_[static_cast<size_t>(layer)];
    return {{l.proj[kO].weight, l.proj[kO].bias}, {l.proj[kDown].weight, l.proj[kDown].bias}};
  }
  at::ScalarType dtype() const override { return dtype_; }

 private:
  // What every layer of one forward shares: RoPE tables and masks of each layer kind, the gates.
  struct Step {
    int64_t B = 0, L = 0, past = 0;
    at::Tensor cos, sin, local_cos, local_sin, mask, local_mask, hidden_gate;
    const GateValues* gates = nullptr;
    KvCache* cache = nullptr;
    ActivationImportance* imp = nullptr;
    ProjectionInputs* capture = nullptr;
  };

  at::Tensor norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& hidden_gate,
                  const at::Tensor& bias = {}) const {
    if (variant_.neox) return layers::layer_norm(x, w, bias, eps_, hidden_gate);
    return variant_.gemma ? layers::rms_norm_unit_offset(x, w, eps_, hidden_gate)
                          : layers::rms_norm(x, w, eps_, hidden_gate);
  }

  void load_neox(RoleLoader& w, int64_t i, LlamaLayer& layer) const {
    layer.attn_norm_bias = w(kAttnNormB, i), layer.mlp_norm_bias = w(kMlpNormB, i);
    layer.qkv = w(kNeoxQkvW, i), layer.qkv_bias = w(kNeoxQkvB, i);
    layer.proj[kO] = {w(kNeoxOW, i), w(kNeoxOB, i)};
    layer.proj[kUp] = {w(kNeoxUpW, i), w(kNeoxUpB, i)};
    layer.proj[kDown] = {w(kNeoxDownW, i), w(kNeoxDownB, i)};
  }

  // GPT-NeoX configs may give RoPE's base as rotary_emb_base.
  nlohmann::json rope_config(const nlohmann::json& config) const {
    if (!variant_.neox || config.contains("rope_theta") || !config.contains("rotary_emb_base")) return config;
    nlohmann::json c = config;
    c["rope_theta"] = config["rotary_emb_base"];
    return c;
  }

  std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& inv_freq, int64_t past, int64_t L) const {
    // Positions past..past+L-1 (transformers uses cache positions, not the padding mask).
    at::Tensor positions = at::arange(past, past + L, at::TensorOptions().dtype(at::kFloat).device(inv_freq.device()));
    at::Tensor freqs = positions.unsqueeze(-1) * inv_freq;
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    if (rope_scaling_ != 1.0) return {(emb.cos() * rope_scaling_).to(dtype_), (emb.sin() * rope_scaling_).to(dtype_)};
    return {emb.cos().to(dtype_), emb.sin().to(dtype_)};
  }

  // With a cache: the tokens continue the cached ones (positions past ...), and their keys and values
  // are appended to it.
  at::Tensor hidden_states(const Batch& batch, const GateValues* gates, KvCache* cache = nullptr) const {
    const at::Tensor& ids = batch.input_ids;
    check_inputs(batch);
    Step st;
    st.B = ids.size(0), st.L = ids.size(1), st.past = cache ? cache->length : 0;
    st.gates = gates, st.cache = cache, st.imp = gates ? gates->importance : nullptr;
    st.capture = gates ? gates->capture : nullptr;
    st.hidden_gate = gates ? gates->hidden : at::Tensor();
    std::tie(st.cos, st.sin) = rope_tables(inv_freq_, st.past, st.L);
    if (local_inv_freq_.defined()) std::tie(st.local_cos, st.local_sin) = rope_tables(local_inv_freq_, st.past, st.L);
    st.mask = attention_mask(batch, st.past, st.L, 0, ids.device());
    if (variant_.exact_window) st.local_mask = attention_mask(batch, st.past, st.L, arch_.sliding_window, ids.device());
    if (st.imp) st.imp->tokens += st.B * st.L;

    const bool resume = st.capture && st.capture->residual.defined();
    at::Tensor x = resume ? st.capture->residual : layers::embedding(embed_, ids, dtype_);
    if (variant_.gemma && !resume) x = x * at::scalar_tensor(variant_.embed_scale, x.options());
    if (!resume) x = layers::gate_last_dim(x, st.hidden_gate);
    for (int64_t i = resume ? st.capture->layer : 0; i < arch_.layers; ++i) {
      const LlamaLayer& l = layers_[static_cast<size_t>(i)];
      const at::Tensor layer_gate = gates && gates->layers.defined() ? gates->layers[i] : at::Tensor();
      const at::Tensor block_in = x;
      const bool capture_base = st.capture && st.capture->layer == i && !l.post_mlp_norm.defined();
      if (variant_.parallel) {  // as transformers adds them: (mlp + attention) + x
        const at::Tensor a =
            layers::gate_branch(attention(l, i, norm_input(x, l.attn_norm, st, l.attn_norm_bias), st), layer_gate);
        if (capture_base) st.capture->mlp_base = (a + x).detach();
        x = layers::gate_branch(mlp(l, i, norm_input(x, l.mlp_norm, st, l.mlp_norm_bias), st), layer_gate) + a + x;
      } else {
        x = x + layers::gate_branch(attention(l, i, norm_input(x, l.attn_norm, st, l.attn_norm_bias), st), layer_gate);
        if (capture_base) st.capture->mlp_base = x.detach();
        x = x + layers::gate_branch(mlp(l, i, norm_input(x, l.mlp_norm, st, l.mlp_norm_bias), st), layer_gate);
      }
      if (st.imp) layers::add_block_influence(st.imp->layers.defined() ? st.imp->layers[i] : at::Tensor(), block_in, x);
      if (gates && gates->block_outputs) gates->block_outputs->push_back(x);
      if (st.capture && st.capture->layer == i) return x;  // what was captured is the caller's; the rest is not needed
    }
    return norm(x, final_norm_, st.hidden_gate, final_norm_bias_);
  }

  // A block's input norm, its activations' sizes added to the hidden-channel importance.
  at::Tensor norm_input(const at::Tensor& x, const at::Tensor& w, const Step& st, const at::Tensor& bias = {}) const {
    at::Tensor hs = norm(x, w, st.hidden_gate, bias);
    if (st.imp && st.imp->hidden.defined())
      st.imp->hidden += hs.detach().abs().sum(at::IntArrayRef{0, 1}).to(at::kFloat);
    return hs;
  }

  // A branch's output into the residual stream: calibrated output scales, the hidden gate, and Gemma's
  // output norm (whose statistics see the kept channels only).
  at::Tensor branch_out(at::Tensor o, const at::Tensor& scales, const at::Tensor& post_norm, const Step& st) const {
    if (scales.defined()) o = o * scales.to(dtype_);
    o = layers::gate_last_dim(o, st.hidden_gate);
    return post_norm.defined() ? norm(o, post_norm, st.hidden_gate) : o;
  }

  // The queries, keys and values [B, L, heads, head_dim]: one product of the fused matrix split as transformers
  // splits it (phi3: [q | k | v]; gpt_neox: per head), or three.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> project_qkv(const LlamaLayer& l, const at::Tensor& hs) const {
    const int64_t B = hs.size(0), L = hs.size(1), hd = arch_.head_dim, H = arch_.heads, KV = arch_.kv_heads;
    if (variant_.neox) {
      const at::Tensor o = layers::linear(hs, l.qkv, l.qkv_bias).view({B, L, H, 3 * hd});
      return {o.narrow(-1, 0, hd), o.narrow(-1, hd, hd), o.narrow(-1, 2 * hd, hd)};
    }
    if (!l.qkv.defined())
      return {l.proj[kQ](hs).view({B, L, H, hd}), l.proj[kK](hs).view({B, L, KV, hd}),
              l.proj[kV](hs).view({B, L, KV, hd})};
    const at::Tensor o = layers::linear(hs, l.qkv);
    return {o.narrow(-1, 0, H * hd).view({B, L, H, hd}), o.narrow(-1, H * hd, KV * hd).view({B, L, KV, hd}),
            o.narrow(-1, (H + KV) * hd, KV * hd).view({B, L, KV, hd})};
  }

  // RoPE on the first rotary_dim channels of each head; the rest pass (partial rotary).
  at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
    if (variant_.rotary_dim == arch_.head_dim) return x * cos + rotate_half(x) * sin;
    const at::Tensor r = x.narrow(-1, 0, variant_.rotary_dim);
    return at::cat(
        {r * cos + rotate_half(r) * sin, x.narrow(-1, variant_.rotary_dim, arch_.head_dim - variant_.rotary_dim)}, -1);
  }

  at::Tensor attention(const LlamaLayer& l, int64_t i, const at::Tensor& hs, const Step& st) const {
    const int64_t B = st.B, L = st.L;
    const GateValues* gates = st.gates;
    auto [q, k, v] = project_qkv(l, hs);
    if (arch_.qk_norm) q = norm(q, l.q_norm, at::Tensor()), k = norm(k, l.k_norm, at::Tensor());
    q = q.transpose(1, 2);
    k = k.transpose(1, 2);
    v = v.transpose(1, 2);
    const bool local = l.sliding && variant_.exact_window;
    const at::Tensor& cos = local && st.local_cos.defined() ? st.local_cos : st.cos;
    const at::Tensor& sin = local && st.local_sin.defined() ? st.local_sin : st.sin;
    q = rotate(q, cos, sin);
    k = rotate(k, cos, sin);
    if (st.cache) {
      auto& ck = st.cache->keys[static_cast<size_t>(i)];
      auto& cv = st.cache->values[static_cast<size_t>(i)];
      if (st.past > 0) k = at::cat({ck, k}, 2), v = at::cat({cv, v}, 2);
      ck = k, cv = v;
    }
    const at::Tensor& mask = local ? st.local_mask : st.mask;
    // One new token after cached ones attends to all of them: no mask.
    const bool causal = !mask.defined() && !(st.past > 0 && L == 1);
    at::Tensor a = at::scaled_dot_product_attention(
        q, k, v, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt, 0.0, causal, variant_.attn_scale,
        /*enable_gqa=*/arch_.kv_heads != arch_.heads);
    if (st.capture && st.capture->layer == i) st.capture->heads = a.detach().transpose(1, 2).reshape({B, L, -1});
    if (gates && gates->heads.defined()) a = a * gates->heads[i].to(dtype_).view({1, arch_.heads, 1, 1});
    if (st.imp && st.imp->heads.defined())
      st.imp->heads[i] += a.detach().abs().to(at::kFloat).mean(-1).sum(at::IntArrayRef{0, 2});
    a = a.transpose(1, 2).reshape({B, L, arch_.heads * arch_.head_dim});
    return branch_out(l.proj[kO](a), gates && gates->attn_out.defined() ? gates->attn_out[i] : at::Tensor(),
                      l.post_attn_norm, st);
  }

  at::Tensor mlp(const LlamaLayer& l, int64_t i, const at::Tensor& hs, const Step& st) const {
    if (variant_.neox) return mlp_out(l, i, at::gelu(l.proj[kUp](hs)), st);  // GPT-NeoX: dense_h_to_4h, exact GeLU
    at::Tensor g, up;
    if (l.gate_up.defined()) {  // phi3: [gate | up] in one product, then up * act(gate) as transformers writes it
      const at::Tensor o = layers::linear(hs, l.gate_up);
      g = o.narrow(-1, 0, arch_.ffn), up = o.narrow(-1, arch_.ffn, arch_.ffn);
    } else {
      g = l.proj[kGate](hs), up = l.proj[kUp](hs);
    }
    return mlp_out(l, i, (variant_.gemma ? at::gelu(g, "tanh") : at::silu(g)) * up, st);
  }

  // The FFN channels m through their gates into the down projection.
  at::Tensor mlp_out(const LlamaLayer& l, int64_t i, at::Tensor m, const Step& st) const {
    const GateValues* gates = st.gates;
    if (st.capture && st.capture->layer == i) st.capture->ffn = m.detach();
    if (gates && gates->ffn.defined()) m = m * gates->ffn[i].to(dtype_);
    if (st.imp && st.imp->ffn.defined()) st.imp->ffn[i] += m.detach().abs().to(at::kFloat).sum(at::IntArrayRef{0, 1});
    return branch_out(l.proj[kDown](m), gates && gates->mlp_out.defined() ? gates->mlp_out[i] : at::Tensor(),
                      l.post_mlp_norm, st);
  }

  // LongRoPE switches to long_factor beyond original_max_position_embeddings (and re-encodes every position):
  // not computed here, so refused.
  void check_positions(int64_t positions) const {
    if (arch_.max_positions > 0 && positions > arch_.max_positions)
      throw DataError(std::to_string(positions) + " positions exceed original_max_position_embeddings " +
                      std::to_string(arch_.max_positions) + " of this " + arch_.model_type +
                      " model (LongRoPE's long factors are not supported): use data.seq_len <= " +
                      std::to_string(arch_.max_positions));
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
    // and only Gemma 3's windowed layers are masked: refuse rather than compute another model.
    if (!variant_.exact_window && arch_.sliding_window > 0 && ids.size(1) > arch_.sliding_window)
      throw DataError(
          "sequence length " + std::to_string(ids.size(1)) + " exceeds the sliding_window " +
          std::to_string(arch_.sliding_window) + " of this " + arch_.model_type +
          " model (attention within the window is exact; beyond it is not supported): use data.seq_len <= " +
          std::to_string(arch_.sliding_window));
    check_positions(ids.size(1));
    const at::Tensor& m = batch.attention_mask;
    if (m.defined() && m.sizes() != ids.sizes())
      throw DataError("attention_mask has shape " + c10::str(m.sizes()) + ", input_ids has " + c10::str(ids.sizes()));
  }

  ArchSummary arch_;
  Variant variant_;
  at::ScalarType dtype_ = at::kFloat;
  double eps_ = 1e-6;
  double rope_scaling_ = 1.0;   // longrope's scale of cos and sin
  at::Tensor final_norm_bias_;  // gpt_neox
  at::Tensor inv_freq_, local_inv_freq_, embed_, final_norm_, lm_head_;
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
  // LlamaConfig and Gemma3TextConfig validate hidden_size % heads.
  t.hidden_multiple_of_heads = type_ == "llama" || type_ == "gemma3_text" || type_ == "gpt_neox";
  t.hidden_is_heads = a.head_dim_from_hidden;

  t.rope = true;
  t.causal = true;
  t.drop_layers = true;  // num_hidden_layers is free; no per-layer setting but layer_types
  t.mlp_matrices = 3;
  t.qkv_bias = a.qkv_bias;
  t.out_bias = a.out_bias;
  t.mlp_in_bias = t.mlp_out_bias = a.mlp_bias;
  t.qk_norm = a.qk_norm;
  // input_layernorm, post_attention_layernorm (RMSNorm: a weight); Gemma 3 adds pre_ and post_feedforward_layernorm.
  t.norm_vectors = type_ == "gemma3_text" ? 4 : 2;
  if (type_ == "gpt_neox") {
    t.kv_groups = false;  // every head has its own key and value, interleaved with its query
    t.mlp_matrices = 2;   // dense_h_to_4h, dense_4h_to_h
    t.norm_vectors = 4;   // two LayerNorms, weight and bias
  }
  // Embedding, the LM head unless tied, the final RMSNorm.
  t.outer_h1 = static_cast<double>(a.vocab_size * (a.tied_embeddings ? 1 : 2) + (type_ == "gpt_neox" ? 2 : 1));
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

const RoleTable& LlamaAdapter::roles() const { return llama_family::roles(type_); }

nlohmann::json LlamaAdapter::pruned_config(const nlohmann::json& config, const Plan& plan) const {
  nlohmann::json in = config;
  if (type_ == "gemma3_text" && plan.chosen.shape.layers != plan.dense.shape.layers) {
    // Without layer_types the kinds follow sliding_window_pattern from layer 0: dropped blocks would shift
    // them. Written out, they are sliced with the kept layers.
    auto it = in.find("layer_types");
    if (it == in.end() || it->is_null()) {
      nlohmann::json kinds = nlohmann::json::array();
      for (bool s : sliding_layers(type_, config, "config.json", plan.dense.shape.layers))
        kinds.push_back(s ? "sliding_attention" : "full_attention");
      in["layer_types"] = kinds;
    }
  }
  nlohmann::json c = ModelAdapter::pruned_config(in, plan);
  if (type_ == "gpt_neox") return c;  // head size: hidden_size / num_attention_heads
  c["num_key_value_heads"] = plan.chosen.shape.kv_heads;
  c["head_dim"] = plan.chosen.shape.head_dim;
  return c;
}

std::vector<safetensors::NamedTensor> LlamaAdapter::prune_weights(const HfCheckpoint& ckpt, const Plan& plan,
                                                                  const GateValues& folds,
                                                                  std::optional<at::ScalarType> dtype) const {
  std::vector<safetensors::NamedTensor> out = ModelAdapter::prune_weights(ckpt, plan, folds, dtype);
  const int64_t h = plan.dense.shape.hidden, kept = plan.chosen.shape.hidden;
  if (type_ != "gemma3_text" || kept == h) return out;
  // Gemma scales the embedding by sqrt(hidden_size): the pruned model's sqrt(kept) makes its residual stream
  // c = sqrt(kept / hidden) times the gated student's. The blocks' input norms and the final norm do not see
  // a common factor (up to eps); the branches' output norms add to the stream, so their scale 1 + w
  // becomes c (1 + w) and the whole stream is c times the student's.
  const double c = std::sqrt(static_cast<double>(kept) / static_cast<double>(h));
  for (auto& [name, t] : out) {
    const bool output_norm = name.find(".post_attention_layernorm.") != std::string::npos ||
                             name.find(".post_feedforward_layernorm.") != std::string::npos;
    if (output_norm) t = ((t.to(at::kDouble) + 1.0) * c - 1.0).to(t.scalar_type());
  }
  return out;
}

}  // namespace hawada
