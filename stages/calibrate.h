// Stage calibrate: at the shape rounding_search chose, the kept structures' scales are fitted to the
// cached teacher with every weight frozen. The student is the dense model sliced to the plan (0/1
// masks); it multiplies each kept head's output, each kept FFN channel and (with
// calibrate.output_scales) each output channel of every block's o_proj / down_proj by a scale, all
// starting at 1, trained with the top-k + tail KL (Adam, warm-up + cosine, data parallel like
// train_gates; checkpoints, resume, SIGTERM). The export folds the scales into o_proj / down_proj, so
// it carries no extra parameters. This is the "mask tuning" of retraining-free pruning (Kwon et al.
// 2022), here by distillation: on SmolLM2-135M it takes the held-out perplexity of a 0.7 params
// shape from 234 (0/1 masks) to about 60 (bench/NOTES.md).
//
// Outputs (rank 0):
//   <run_dir>/calibrate/scales.safetensors   heads [L, H], ffn [L, F], attn_out / mlp_out [L, D]
//                                            (dense indices; 0 where the plan removes a structure)
//   <run_dir>/calibrate/weights.safetensors  calibrate.reconstruct: the pruned student's tensors in fp32: the
//                                            least-squares refit of its output projections (training/reconstruct.h,
//                                            after or before the scale fit: calibrate.reconstruct_order) with the
//                                            scales folded; heal and export start from them
//   <run_dir>/calibrate/metrics.jsonl        one line per step
//   <run_dir>/calibrate/checkpoints/step-N/  the scales and Adam moments (the newest only)
#pragma once

#include <filesystem>
#include <string>

#include "core/dist/communicator.h"
#include "core/prune/shape_search.h"
#include "stages/layout.h"
#include "stages/stage.h"
#include "training/distill.h"
#include "training/student.h"
#include "training/training_loop.h"

namespace hawada {

/// How one fit runs.
struct FitOptions {
  int64_t steps = 0;
  double lr = 0.03;
  int64_t warmup = 10;
  int64_t micro_batch = 4, grad_accum = 1;
  bool output_scales = true;
  std::string order_tag = "calibrate";            ///< the sample order's key (probes use their own)
  const StateCheckpoints* checkpoints = nullptr;  ///< resume and checkpoint (the stage), or none (probes)
  int64_t checkpoint_every = 50;
  std::filesystem::path metrics;    ///< one line per step (rank 0), or none
  std::string stage = "calibrate";  ///< for logs and errors
};

/// Fits the scales of `plan`'s student (see above) and returns them, dense-indexed. Collective.
Scales fit_scales(const Config& config, const LoadedModel& dense, const Plan& plan, const DistillData& data,
                  const FitOptions& options, const at::Device& device, Communicator& comm);

/// Mean KL per token of `plan`'s student with `scales` against the cache, over `samples` (each rank
/// takes every world-th sample; summed over the ranks). Collective.
double student_kl(const Config& config, const LoadedModel& dense, const Plan& plan, const Scales& scales,
                  const DistillData& data, const std::vector<int64_t>& samples, const at::Device& device,
                  Communicator& comm);

/// The calibrate stage.
class CalibrateStage final : public Stage {
 public:
  std::string_view name() const override { return stage_names::calibrate; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;

 private:
  std::string fingerprint_;
  std::filesystem::path cache_dir_;
};

}  // namespace hawada
