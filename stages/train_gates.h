// Stage train_gates: learns hard-concrete gates on the frozen teacher weights by distillation from
// the teacher cache, under a budget on the expected cost (parameters or modelled latency) enforced
// with Lagrange multipliers. Data parallel: the global batch of every step is the same sequence of
// samples whatever the world size; each rank runs its micro-batches and the gate gradients are
// all-reduced in one bucket. Checkpoints resume bit for bit; SIGTERM checkpoints and exits with
// kExitRequeue.
//
// Outputs (rank 0):
//   <run_dir>/train/checkpoints/step-N/state.safetensors   log-alpha, Adam moments, multipliers
//   <run_dir>/train/metrics.jsonl                          one line per step
//   <run_dir>/train/gates.safetensors                      the final log-alphas, per kind
#pragma once

#include "stages/layout.h"
#include "stages/stage.h"

namespace hawada {

/// The train_gates stage.
class TrainGatesStage final : public Stage {
 public:
  std::string_view name() const override { return stage_names::train_gates; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;

 private:
  std::string fingerprint_;
  std::filesystem::path cache_dir_;
};

}  // namespace hawada
