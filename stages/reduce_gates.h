// Stage reduce_gates: one global score per structure (head, FFN channel, hidden channel) from the
// trained gates. Each rank runs the student with its evaluation gates over its share of
// train.importance_batches micro-batches and accumulates the activation importance (mean |output|
// of each structure after its gate); one all-reduce sums them. Every rank then holds the same
// scores (checked by hash; a difference is a CommError) and rank 0 writes
// <run_dir>/gates/scores.safetensors with, per kind:
//   <kind>.keep_probability   P(gate > 0) of the trained hard-concrete gates
//   <kind>.evaluation         the evaluation gate values (HardConcrete::evaluation)
//   <kind>.importance         mean |output| per token
//   <kind>.score              keep_probability x (importance / mean importance of the kind + 1e-3)
#pragma once

#include "stages/layout.h"
#include "stages/stage.h"

namespace hawada {

/// The reduce_gates stage.
class ReduceGatesStage final : public Stage {
 public:
  std::string_view name() const override { return stage_names::reduce_gates; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;

 private:
  std::string fingerprint_;
};

}  // namespace hawada
