// The training machinery the stages that train (train_gates, calibrate, heal) share, apart from what
// they train: the optimizer (Adam on one flat fp32 vector), checkpoints that resume bit for bit, SIGTERM
// at a step boundary, the drift check across ranks, the finiteness checks, the learning-rate schedule,
// and TrainingLoop, which does all the bookkeeping around a stage's own steps.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include "core/dist/communicator.h"
#include "core/io/safetensors.h"

namespace hawada {

/// SIGTERM (SLURM preemption) sets a flag for the lifetime of the object; the step boundary asks.
class PreemptionFlag {
 public:
  PreemptionFlag();
  ~PreemptionFlag();
  PreemptionFlag(const PreemptionFlag&) = delete;
  PreemptionFlag& operator=(const PreemptionFlag&) = delete;
  /// True when any rank received SIGTERM (collective: every rank calls it at the same step).
  bool any_rank() const;
};

/// Adam(W) on one flat fp32 vector (the moments live beside it, on its device).
class Adam {
 public:
  Adam() = default;
  Adam(const at::Tensor& like, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8);
  /// One step at `lr` with decoupled weight decay `weight_decay` (AdamW) on `params` from `grad`.
  /// `step` counts from 1 (bias correction).
  void step(at::Tensor& params, const at::Tensor& grad, double lr, int64_t step, double weight_decay = 0);
  at::Tensor m, v;

 private:
  double beta1_ = 0.9, beta2_ = 0.999, eps_ = 1e-8;
};

/// Training checkpoints of one stage: <dir>/step-NNNNNNNN/state.safetensors, published atomically by
/// rank 0; the newest is kept.
class StateCheckpoints {
 public:
  StateCheckpoints(std::filesystem::path dir, std::string fingerprint, std::string stage);
  /// Rank 0 writes the named tensors (any device; written as CPU bytes) for `step`.
  void write(int64_t step, const std::vector<safetensors::NamedTensor>& tensors) const;
  /// The newest checkpoint of this fingerprint: rank 0 reads it into `targets` (same shapes and dtypes,
  /// CheckpointError otherwise) and broadcasts every tensor's bytes to the other ranks. Returns its step,
  /// 0 when there is none (a directory of other inputs is removed with a warning).
  int64_t resume(const std::vector<std::pair<std::string, at::Tensor*>>& targets, Communicator& cpu_comm) const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
  std::string fingerprint_, stage_;
};

/// metrics.jsonl without the lines past `step` (a resumed run rewrites them).
void trim_metrics(const std::filesystem::path& file, int64_t step);

/// XXH64 of a tensor's bytes (on any device).
uint64_t tensor_hash(const at::Tensor& t);
/// CommError naming `what` and the step when the ranks hold different bytes of `t` (collective).
void check_identical_across_ranks(const at::Tensor& t, const std::string& what, int64_t step);
/// A typed error naming the stage, the step and the rank when `value` is not finite (nothing non-finite
/// is ever trained on or published).
void check_finite(double value, const std::string& what, const std::string& stage, int64_t step);

/// Learning-rate factor of warm-up then cosine decay to `floor` (a fraction of the peak) at `total`.
double warmup_cosine(int64_t step, int64_t warmup, int64_t total, double floor = 0.1);

/// Everything a resumable training loop does around its own steps: resume from the newest checkpoint,
/// the metrics file (rank 0; a resumed run trims it to its step), progress lines with an ETA, and at
/// each step's end the drift check, the fault point "<stage>.after_step_N", checkpoints, and SIGTERM
/// (checkpoint, then Preempted, which exits kExitRequeue). Without checkpoints (a probe's short fit)
/// it does only the metrics and progress lines.
class TrainingLoop {
 public:
  /// The tensors a checkpoint holds, by name: read in place on resume, written at checkpoints.
  using State = std::vector<std::pair<std::string, at::Tensor*>>;
  struct Options {
    std::string stage;  ///< logs, errors, fault points
    int64_t steps = 0;
    int64_t checkpoint_every = 0;
    int64_t check_every = 0;                        ///< the drift check's period (dist.check_every)
    const StateCheckpoints* checkpoints = nullptr;  ///< none: no resume, checkpoints, drift check or SIGTERM
    std::filesystem::path metrics;                  ///< none: no metrics file
  };
  TrainingLoop(Options options, State state);
  ~TrainingLoop();
  /// The step to start from: the newest checkpoint's (its tensors now in the state) or 0; opens the
  /// metrics file. Collective.
  int64_t resume(Communicator& cpu_comm);
  /// Rank 0 appends one line to the metrics file.
  void record(const nlohmann::json& line);
  /// Rank 0 logs "<stage>: step S/N <what> ETA t" at most every 5 s, at the last step, or when `force`.
  void progress(int64_t step, const std::string& what, bool force = false);
  /// After `step`: the ranks' `replicated` compared (every check_every steps and at the end), the fault
  /// point, a checkpoint when due or on SIGTERM, then Preempted on SIGTERM. Collective.
  void end_step(int64_t step, const at::Tensor& replicated, const std::string& what);

 private:
  using Clock = std::chrono::steady_clock;
  Options o_;
  State state_;
  std::unique_ptr<PreemptionFlag> sigterm_;
  std::ofstream metrics_;
  Clock::time_point t0_, last_report_;
  int64_t first_step_ = 0;
};

}  // namespace hawada
