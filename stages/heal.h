// Stage heal (off unless heal.steps > 0): distils the pruned model's weights from the same teacher
// cache. The student is the calibrated slice of the plan (scales folded), held in memory; the weights
// of the kinds heal.train names train; the teacher is the cache (its weights are loaded only for
// heal.hidden_weight's intermediate-state term). Loss: train_gates' distillation loss for the cache's form
// (sampled tokens: the unbiased KL estimate; top-k: the top-k + tail KL, and optional MSE), on heal.data's samples
// or the run's training samples, never the held-out ones.
// AdamW on fp32 master weights (one flat vector) with the forward and backward in the compute dtype,
// linear warm-up then cosine decay, global-norm gradient clipping, micro-batches with accumulation.
// Data parallel: the global batch of a step is the same samples whatever the world size; the weight
// gradients are all-reduced in buckets of kBucketElements. Checkpoints (masters, moments, step)
// resume bit for bit on the CPU; SIGTERM checkpoints at the step boundary and exits with kExitRequeue.
//
// Bytes held per trained parameter: the weight in the compute dtype (2 for bf16), its gradient in that
// dtype while a backward runs (2), the fp32 master (4), the fp32 gradient accumulator (4) and the two
// Adam moments (8): 20 bytes, 18 between backwards. A 1.24 G-parameter model pruned to 0.7 (0.87 G parameters):
// 17 GB, which leaves most of an 80 GB GPU for activations. In fp32 compute the weights are the
// masters (16 bytes).
//
// Outputs (rank 0):
//   <run_dir>/heal/weights.safetensors     every tensor of the pruned model, fp32 (export writes them)
//   <run_dir>/heal/metrics.jsonl           per step: kl, lr, grad norm, tokens/s; held-out KL every
//                                          heal.eval_every steps
//   <run_dir>/heal/checkpoints/step-N/     masters, Adam moments (the newest only)
#pragma once

#include <filesystem>
#include <string>

#include "stages/layout.h"
#include "stages/stage.h"

namespace hawada {

/// The heal stage.
class HealStage final : public Stage {
 public:
  std::string_view name() const override { return stage_names::heal; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;

 private:
  std::string fingerprint_;
  std::filesystem::path cache_dir_, heal_cache_;
};

}  // namespace hawada
