// What the training stages share (train_gates, calibrate, heal): distillation from the teacher cache,
// data-parallel steps whose global batch is the same samples whatever the world size, Adam on one
// flat fp32 parameter vector, checkpoints that resume bit for bit, SIGTERM at a step boundary, and the
// metrics file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "adapters/model.h"
#include "core/data/data.h"
#include "core/data/teacher_cache.h"
#include "core/dist/communicator.h"
#include "core/format/plan.h"
#include "core/io/safetensors.h"
#include "training/settings.h"

namespace hawada {

struct ArchSummary;

/// The data and the teacher cache of a distillation stage, checked against each other: the last
/// `train.holdout` samples are never trained on.
class DistillData {
 public:
  /// CacheError when the cache does not hold the data's samples; ConfigError when the holdout leaves
  /// fewer training samples than one global batch (`global_batch`).
  DistillData(const Config& config, const ArchSummary& arch, const std::filesystem::path& cache_dir,
              int64_t global_batch, const std::string& stage);
  /// Any data set (heal.data): every sample but the last `holdout` is a training sample.
  DistillData(const Config& config, const DataSpec& spec, int64_t holdout, const ArchSummary& arch,
              const std::filesystem::path& cache_dir, int64_t global_batch, const std::string& stage);
  int64_t train_samples() const { return train_samples_; }
  int64_t samples() const { return data_->size(); }
  /// The inputs of `samples`, on `device`, and their cached teacher rows (on the host).
  Batch batch(const std::vector<int64_t>& samples, const at::Device& device) const;
  CacheChunk teacher(const std::vector<int64_t>& samples) const;

 private:
  std::unique_ptr<DataSource> data_;
  CacheLayout layout_;
  std::filesystem::path cache_dir_;
  int64_t train_samples_ = 0;
};

/// The teacher rows as the sliced student of `plan` is compared with them: an encoder's hidden states
/// in the teacher's coordinates (CacheChunk::hidden_channels), the channels the plan drops as zeros.
/// Logits are unchanged.
CacheChunk for_student(CacheChunk teacher, const Plan& plan);

/// An infinite stream of epochs, each a seeded permutation of [0, samples): position p is the same
/// sample whatever the world size.
class SampleOrder {
 public:
  SampleOrder(int64_t samples, int64_t seed, std::string_view tag = "order");
  int64_t at(int64_t position);
  /// The `micro_batch` samples of global micro-batch `g` of step `step` (micros = global micro-batches per step).
  std::vector<int64_t> micro_batch(int64_t step, int64_t g, int64_t micros, int64_t micro_batch);

 private:
  int64_t samples_, seed_;
  std::string tag_;
  std::map<int64_t, at::Tensor> epochs_;
};

/// A 64-bit seed from values and a tag (XXH64): noise and orders keyed by (seed, step, ...).
uint64_t mix_seed(std::initializer_list<uint64_t> values, std::string_view tag);

/// What one micro-batch's loss was, and where its time went (wall times of finished device work).
struct LossParts {
  double kl = 0, mse = 0;
  double states = 0;  ///< the intermediate-state term (BoundaryStates), unweighted
  int64_t tokens = 0;
  double forward_s = 0, loss_s = 0, backward_s = 0;
};

/// The distillation loss of one micro-batch against the cached teacher, times `scale`, backpropagated
/// into whatever requires gradients (gates, scales or weights). LMs: top-k + tail KL at temperature T or the
/// sampled cache's unbiased KL estimate (core/prune/distill_loss.h), plus mse_weight x MSE on the cached top-k
/// logits; the LM head runs a piece of tokens at a time on detached features, so [tokens, vocab] never exists
/// whole, and on the CPU the loss's gradient in a piece's logits is one fused pass per row
/// (core/prune/logit_tail.h distill_kl_grad; not with T != 1 or the MSE term). Classifiers: KL on
/// the full cached logits. Encoders (hidden-state caches): the relative squared error of every token
/// plus 1 - cosine of the mean-pooled embeddings (core/prune/distill_loss.h hidden_state_loss), reported as
/// `kl` (the loss) and `mse` (its token term); kd_temperature and mse_weight do not apply.
/// With `states` (causal LMs), states->weight x boundary_state_loss joins the loss, reported unweighted in `states`.
/// The teacher's residual stream where each of the student's blocks hands over to the next (heal's intermediate-state
/// term): `teacher[j]` [B, L, dense hidden] is what the teacher's stream holds at the input of the block that follows
/// the student's block j in the dense model (after the last dense block, for the last one).
struct BoundaryStates {
  std::vector<at::Tensor> teacher;
  at::Tensor channels;  ///< int64 [hidden']: the teacher channel of each student hidden channel; undefined: the same
  double weight = 0;    ///< of the term in the loss
};
/// The intermediate-state term: over the boundaries, the mean of the relative squared error |s - t|^2 / |t|^2 per
/// token (core/prune/distill_loss.h hidden_state_loss's token term) of the student's stream leaving each block against
/// `states.teacher`. Differentiable in `student_blocks`; fp32 scalar.
at::Tensor boundary_state_loss(const std::vector<at::Tensor>& student_blocks, const BoundaryStates& states,
                               const at::Tensor& mask);

LossParts distill_backward(const Model& model, const Batch& batch, const CacheChunk& teacher, const GateValues* gates,
                           double kd_temperature, double mse_weight, double scale,
                           const BoundaryStates* states = nullptr);

/// The negative log-likelihood of `targets` ([B, L] token ids for an LM, [B] labels for a classifier,
/// float [B, L, hidden] states for an encoder under a Gaussian of each target's mean-square variance),
/// summed over tokens, backpropagated into whatever requires gradients (the Fisher information pass).
double nll_backward(const Model& model, const Batch& batch, const at::Tensor& targets, const GateValues* gates);
/// Targets drawn from the cached teacher distribution (its top-k, renormalised; the full logits of a
/// classifier; the teacher's hidden states plus noise of each token's RMS for an encoder), with a
/// generator keyed by `seed`.
at::Tensor sample_teacher_targets(const CacheChunk& teacher, uint64_t seed);

/// The distillation loss without gradients (held-out evaluation): mean KL per token over the batch
/// (an encoder: its hidden-state loss).
double distill_loss(const Model& model, const Batch& batch, const CacheChunk& teacher, const GateValues* gates,
                    double kd_temperature);

/// The held-out distillation loss of the hard-gated student `model` (the plan's shape) on `samples`, each rank its
/// share: mean KL per real token (encoders: their hidden-state loss), summed over the ranks. Collective.
double heldout_kl(const Model& model, const Plan& plan, const DistillData& data, const std::vector<int64_t>& samples,
                  double kd_temperature, const at::Device& device, Communicator& comm);

}  // namespace hawada
