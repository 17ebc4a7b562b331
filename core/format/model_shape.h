// A uniform transformer shape (every layer alike, as transformers builds them from config.json): what
// the cost model prices, the search chooses among and a plan records. No LibTorch here.
//
// Core knows no architecture by name: an adapter describes its architecture with ShapeTraits (what is
// grouped, coupled, biased, normalized, and the matrix products outside the layers), and the cost
// model, the search, the plan checks and the tools read only those.
#pragma once

#include <cstdint>
#include <vector>

namespace hawada {

/// One matrix product outside the layers, [rows, in] x [in, out], per forward pass of `batch` samples of
/// `tokens` tokens: rows = rows_per_token * batch * tokens + rows_per_sample * batch. An `in` or `out`
/// of 0 stands for the hidden width (which pruning changes).
struct OuterProduct {
  double rows_per_token = 0, rows_per_sample = 0;
  int64_t in = 0, out = 0;
};

/// What a model puts out, which decides what the teacher cache holds and what distillation compares.
enum class ModelOutput {
  token_logits,   ///< a language model: logits over the vocabulary at every position (cached as top-k)
  sample_logits,  ///< a classifier: logits over the labels, one row per sample
  hidden_states,  ///< an encoder without a head (sentence embeddings): the last hidden states [L, hidden]
};

/// What an architecture is, as data (filled by its adapter from config.json).
struct ShapeTraits {
  /// What the model puts out (see ModelOutput).
  ModelOutput output = ModelOutput::token_logits;
  /// Key/value heads shared by groups of query heads (GQA; kv_heads divides heads). False: every query
  /// head has its own key and value (kv_heads == heads, and pruning a head prunes its k and v).
  bool kv_groups = true;
  /// hidden_size == heads x head_dim (many encoders): heads and hidden are pruned together.
  bool hidden_is_heads = false;
  /// transformers' config validation requires hidden_size % num_attention_heads == 0.
  bool hidden_multiple_of_heads = true;
  /// Rotary position embeddings: head_dim must stay even.
  bool rope = true;
  /// Causal self-attention (language models) or full (encoders).
  bool causal = true;
  /// Whole blocks (attention + MLP) may be dropped: num_hidden_layers is free in transformers and every
  /// per-layer setting of the config can be sliced with the layers (layer gates, [gates] layers).
  bool drop_layers = false;
  /// Matrices of the MLP: 3 for a gated MLP (gate, up, down), 2 for fc1, fc2.
  int mlp_matrices = 3;
  /// Biases: on q/k/v, on the attention output, on the MLP input matrices, on the MLP output.
  bool qkv_bias = false, out_bias = false, mlp_in_bias = false, mlp_out_bias = false;
  /// Per-head RMSNorm on queries and keys: 2 x head_dim parameters per layer.
  bool qk_norm = false;
  /// Parameters of a layer's norms per hidden channel (2 RMSNorms: 2; 2 LayerNorms: 4).
  int norm_vectors = 2;
  /// Tokens of one sample when the architecture fixes it (images: patches + CLS); 0: the data's seq_len.
  int64_t tokens_per_sample = 0;
  /// Parameters outside the layers, as a polynomial in the hidden width h: h2 h^2 + h1 h + h0.
  double outer_h2 = 0, outer_h1 = 0, outer_h0 = 0;
  /// The part of outer_h1 in embedding tables (vocabulary, learned positions, token types, a CLS token):
  /// what a non-embedding parameter count leaves out. An untied LM head stays counted (it is a product).
  double embedding_h1 = 0;
  /// Matrix products before the layers (e.g. a patch embedding) and after them (LM head, classifier, pooler).
  std::vector<OuterProduct> before, after;
};

/// A uniform transformer shape, as config.json describes it.
struct ModelShape {
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0;
  ShapeTraits traits;
};

}  // namespace hawada
