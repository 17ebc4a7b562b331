#include "adapters/huggingface/llama_roles.h"

namespace hawada::llama_family {
namespace {

// LlamaForCausalLM's weights (and the LLaMA family's: Qwen2's q/k/v biases, Qwen3's per-head q/k
// norms), in one table: names, axes, folds, presence, kinds.
// A table, one role per line (clang-format would put each field on its own).
// clang-format off

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
// Gemma3ForCausalLM: LLaMA's roles in the same order (kMlpNorm is pre_feedforward_layernorm), q/k norms
// always, biases with attention_bias, the two output norms; RMSNorms scale by 1 + weight (zeros at init).
const RoleTable& gemma3_roles() {
  static const RoleTable table({
      {"model.embed_tokens.weight", "embedding", {A::vocab, A::hidden}},
      {"model.norm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::zeros},
      {"lm_head.weight", "head", {A::vocab, A::hidden}, Presence::untied_head},
      {"model.layers.%d.input_layernorm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::zeros},
      {"model.layers.%d.pre_feedforward_layernorm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::zeros},
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
      {"model.layers.%d.self_attn.q_norm.weight", "attention", {A::head_dim}, Presence::qk_norm, Fold::none, Use::vector, Init::zeros},
      {"model.layers.%d.self_attn.k_norm.weight", "attention", {A::head_dim}, Presence::qk_norm, Fold::none, Use::vector, Init::zeros},
      {"model.layers.%d.self_attn.rotary_emb.inv_freq", "attention", {}, Presence::buffer},
      {"model.layers.%d.post_attention_layernorm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::zeros},
      {"model.layers.%d.post_feedforward_layernorm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::zeros},
  });
  return table;
}
// Phi3ForCausalLM: LLaMA's layer with q, k, v in one matrix (rows [q | k | v]) and gate, up in another
// ([gate | up]); no biases. Its roles after kMlpNorm differ from LLaMA's.
const RoleTable& phi3_roles() {
  static const RoleTable table({
      {"model.embed_tokens.weight", "embedding", {A::vocab, A::hidden}},
      {"model.norm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::ones},
      {"lm_head.weight", "head", {A::vocab, A::hidden}, Presence::untied_head},
      {"model.layers.%d.input_layernorm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::ones},
      {"model.layers.%d.post_attention_layernorm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::ones},
      {"model.layers.%d.self_attn.qkv_proj.weight", "attention", {A::fused, A::hidden}, Presence::always, Fold::none, Use::matrix, Init::normal, true, {A::q, A::kv, A::kv}},
      {"model.layers.%d.self_attn.o_proj.weight", "attention", {A::hidden, A::q}, Presence::always, Fold::attention_out},
      {"model.layers.%d.mlp.gate_up_proj.weight", "mlp", {A::fused, A::hidden}, Presence::always, Fold::none, Use::matrix, Init::normal, true, {A::ffn, A::ffn}},
      {"model.layers.%d.mlp.down_proj.weight", "mlp", {A::hidden, A::ffn}, Presence::always, Fold::mlp_out},
      {"model.layers.%d.self_attn.rotary_emb.inv_freq", "attention", {}, Presence::buffer},
  });
  return table;
}
// GPTNeoXForCausalLM (Pythia): LayerNorms with biases, q, k, v interleaved per head in query_key_value (head h's
// q, k, v channels, then h + 1's), a GeLU MLP of two matrices with biases; the head is stored as embed_out
// (transformers names the module lm_head and maps the two; a checkpoint holding lm_head.weight is read too).

const RoleTable& gpt_neox_roles() {
  static const RoleTable table({
      {"gpt_neox.embed_in.weight", "embedding", {A::vocab, A::hidden}},
      {"gpt_neox.final_layer_norm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::ones},
      {"embed_out.weight", "head", {A::vocab, A::hidden}, Presence::untied_head},
      {"gpt_neox.layers.%d.input_layernorm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::ones},
      {"gpt_neox.layers.%d.post_attention_layernorm.weight", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::ones},
      {"gpt_neox.final_layer_norm.bias", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::zeros},
      {"gpt_neox.layers.%d.input_layernorm.bias", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::zeros},
      {"gpt_neox.layers.%d.post_attention_layernorm.bias", "norm", {A::hidden}, Presence::always, Fold::none, Use::vector, Init::zeros},
      {"gpt_neox.layers.%d.attention.query_key_value.weight", "attention", {A::fused, A::hidden}, Presence::always, Fold::none, Use::matrix, Init::normal, true, {A::q, A::q, A::q}, Fuse::per_head},
      {"gpt_neox.layers.%d.attention.query_key_value.bias", "attention", {A::fused}, Presence::qkv_bias, Fold::none, Use::matrix, Init::zeros, true, {A::q, A::q, A::q}, Fuse::per_head},
      {"gpt_neox.layers.%d.attention.dense.weight", "attention", {A::hidden, A::q}, Presence::always, Fold::attention_out},
      {"gpt_neox.layers.%d.attention.dense.bias", "attention", {A::hidden}, Presence::out_bias, Fold::attention_out, Use::matrix, Init::zeros},
      {"gpt_neox.layers.%d.mlp.dense_h_to_4h.weight", "mlp", {A::ffn, A::hidden}},
      {"gpt_neox.layers.%d.mlp.dense_h_to_4h.bias", "mlp", {A::ffn}, Presence::mlp_bias, Fold::none, Use::matrix, Init::zeros},
      {"gpt_neox.layers.%d.mlp.dense_4h_to_h.weight", "mlp", {A::hidden, A::ffn}, Presence::always, Fold::mlp_out},
      {"gpt_neox.layers.%d.mlp.dense_4h_to_h.bias", "mlp", {A::hidden}, Presence::mlp_bias, Fold::mlp_out, Use::matrix, Init::zeros},
      {"lm_head.weight", "head", {A::vocab, A::hidden}, Presence::alias},
      // Buffers older versions saved (the causal mask, its fill value, RoPE's frequencies): never read.
      {"gpt_neox.layers.%d.attention.bias", "attention", {}, Presence::buffer},
      {"gpt_neox.layers.%d.attention.masked_bias", "attention", {}, Presence::buffer},
      {"gpt_neox.layers.%d.attention.rotary_emb.inv_freq", "attention", {}, Presence::buffer},
  });
  return table;
}
// clang-format on
}  // namespace

const RoleTable& roles(std::string_view type) {
  return type == "gemma3_text" ? gemma3_roles()
         : type == "phi3"      ? phi3_roles()
         : type == "gpt_neox"  ? gpt_neox_roles()
                               : llama_roles();
}

}  // namespace hawada::llama_family
