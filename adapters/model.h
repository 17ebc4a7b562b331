// A loaded model: the frozen teacher weights plus a forward pass that can apply gates. The gate
// parametrisation (hard concrete) lives with training; a model only multiplies by gate values.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/prune/batch.h"

namespace hawada {

/// Activation importance accumulated by a forward pass (reduce_gates): sums over tokens of the mean
/// |output| of each structure after its gate. fp32 tensors, zero-initialised by the caller.
struct ActivationImportance {
  at::Tensor heads;    ///< [layers, heads]: mean |attention output| over the head's channels
  at::Tensor ffn;      ///< [layers, intermediate]: |act(gate) * up| of each channel
  at::Tensor hidden;   ///< [hidden]: |normalised input| of every block, summed over the blocks
  at::Tensor layers;   ///< [layers]: the block influence 1 - cos(block input, block output) of every token
  int64_t tokens = 0;  ///< tokens seen (every position of every sequence)
};

/// What one layer's output projections read, before their gates, as a forward pass computed it: the data
/// calibrate's reconstruction refits those projections on (training/reconstruct.h).
struct ProjectionInputs {
  /// The layer captured. The forward pass stops after it and returns the residual stream leaving it (not the
  /// model's output).
  int64_t layer = -1;
  /// When defined, the residual stream [B, L, hidden] entering `layer` (what a pass stopped at the block before
  /// returned): the pass starts there instead of at the embedding, so refitting layer after layer costs one
  /// block per pass.
  at::Tensor residual;
  at::Tensor heads;  ///< [B, L, heads x head_dim]: the attention output before the head gates and o_proj
  at::Tensor ffn;    ///< [B, L, intermediate]: the FFN channels before their gates and the down projection
  /// [B, L, hidden]: what the MLP branch's output is added to in the residual stream (after the attention branch;
  /// the block's input plus the attention output where both branches read the same input). Undefined where the
  /// branch's output does not enter the stream linearly (an output norm, as Gemma's), so that a least-squares fit of
  /// the down projection to a target residual stream is not exact there.
  at::Tensor mlp_base;
};

/// A layer's output projection (attention output, MLP down) as the model holds it: weight [out, in] and bias
/// (undefined: none). The model's own tensors: changing them in place changes the model.
struct Projection {
  at::Tensor weight, bias;
};

/// Gate multipliers for one forward pass; an undefined tensor means "no gate of that kind".
struct GateValues {
  at::Tensor heads;   ///< [layers, query heads]: scales each head's attention output before the output projection
  at::Tensor ffn;     ///< [layers, intermediate]: scales each FFN channel before the down projection
  at::Tensor hidden;  ///< [hidden]: one per residual-stream channel, shared by every layer, embedding and norm
  /// [layers]: one per block (attention + MLP together): the block's output is g x block(x) + (1 - g) x x,
  /// so 0 removes the block exactly (the residual stream passes through) and 1 is the block bit for bit.
  at::Tensor layers;
  /// [layers, hidden]: output scales of each block's last projection (attention output / MLP down), per
  /// output channel. Calibration fits them with the weights frozen; an export folds them into that
  /// projection's rows (and bias).
  at::Tensor attn_out, mlp_out;
  ActivationImportance* importance = nullptr;  ///< when set, the forward pass adds to it
  ProjectionInputs* capture = nullptr;         ///< when set, the forward pass fills it (and stops at its layer)
  /// When set, the forward pass appends the residual stream [B, L, hidden] leaving every block, in order (not
  /// detached: heal's intermediate-state loss differentiates through them). Causal LMs of the LLaMA family.
  std::vector<at::Tensor>* block_outputs = nullptr;
};

/// The keys and values of the tokens a causal LM has seen, per layer: what generate() keeps between
/// decode steps.
struct KvCache {
  std::vector<at::Tensor> keys, values;  ///< per layer [batch, kv heads, tokens, head_dim]
  int64_t length = 0;                    ///< tokens seen
};

/// How many gates of each kind a model has.
struct GateShape {
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t ffn = 0;
  int64_t hidden = 0;
};

/// A model loaded for inference or gate training. Weights are frozen (no gradients are kept for them).
class Model {
 public:
  virtual ~Model() = default;
  /// Logits for a batch: [B, L, vocab] for LMs, [B, labels] for classifiers. Without gates this is the
  /// teacher; with gates the student. Gates of exactly 1 give bit-identical results to no gates.
  at::Tensor logits(const Batch& batch, const GateValues* gates = nullptr) const {
    return head(features(batch, gates));
  }
  /// What the output head reads: the final normalised hidden states [B, L, hidden] of an LM, the
  /// class-token representation [B, hidden] of a classifier.
  virtual at::Tensor features(const Batch& batch, const GateValues* gates = nullptr) const = 0;
  /// The output head applied to features of any leading shape (so callers can take logits in
  /// chunks and never hold [B, L, vocab] at once).
  virtual at::Tensor head(const at::Tensor& features) const = 0;
  /// Every output the architecture has, by Hugging Face name ("logits", or "last_hidden_state" and
  /// "pooler_output" for a bare ViTModel).
  virtual std::vector<std::pair<std::string, at::Tensor>> outputs(const Batch& batch,
                                                                  const GateValues* gates = nullptr) const {
    return {{"logits", logits(batch, gates)}};
  }
  /// The gate counts of this architecture.
  virtual GateShape gate_shape() const = 0;
  /// Causal LMs: the final normalised hidden states of `ids` [B, L] as the continuation of what `cache`
  /// holds (positions cache.length ...), extending the cache with them: a prefill when the cache is
  /// empty, a decode step for one token. No gates, no padding. UsageError for models that do not decode.
  virtual at::Tensor decode(const at::Tensor& ids, KvCache& cache) const;
  /// Layer `layer`'s attention-output and MLP-down projections (see Projection), for the reconstruction
  /// that refits them; a forward pass with GateValues::capture must be supported too. UsageError for the
  /// architectures that do not offer it.
  virtual std::pair<Projection, Projection> output_projections(int64_t layer) const;
  /// Compute dtype of the forward pass.
  virtual at::ScalarType dtype() const = 0;
  /// The weights the forward pass uses, by Hugging Face name (a tied LM head appears once, as the
  /// embedding): changing one in place changes the model. For the stages that train them (heal).
  const std::vector<std::pair<std::string, at::Tensor>>& named_weights() const { return weights_; }

 protected:
  std::vector<std::pair<std::string, at::Tensor>> weights_;
};

}  // namespace hawada
