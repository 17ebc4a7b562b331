// What the gate stages share: the model and data of a run, and the gate parameters of the student
// (the frozen teacher weights with gates) as one flat vector.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "adapters/adapter.h"
#include "adapters/model.h"
#include "core/data/data.h"
#include "core/dist/communicator.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "core/prune/cost_model.h"
#include "core/prune/gates.h"
#include "core/prune/shape_search.h"
#include "training/settings.h"

namespace hawada {

/// How the config cuts the data.
DataSpec data_spec(const Config& config);
/// heal.data's: data_spec's format and seq_len, heal.data's file, heal.samples of it.
DataSpec heal_data_spec(const Config& config);

/// A heal step's batch: micro-batches of heal.micro_batch, heal.grad_accum of them per rank (0: train.*'s).
struct HealBatch {
  int64_t micro_batch = 0, accum = 0, global_micros = 0;
  int64_t samples() const { return micro_batch * global_micros; }
};
/// The batch heal.* asks for (train.*'s where 0) at this world size.
HealBatch heal_batch(const Config& config);
/// The compute dtype of `model.dtype`.
at::ScalarType compute_dtype(const Config& config);
/// Whether the LM head's products run in bf16 with fp32 accumulation (`model.head_matmul`, set for the process
/// by the runner; core/prune/matmul_precision.h): an fp32 model on a CPU with native bf16 under `auto`, or
/// `bf16` there; never on a GPU, on a CPU without bf16 instructions, or for a bf16 model (already bf16).
bool bf16_head(const Config& config);
/// The compute precision in stage fingerprints and cache keys: compute_dtype's name, "+bf16-head" appended
/// when bf16_head (so fp32 keys stay what they were).
std::string precision_key(const Config& config);
/// The data source of the run, checked against the architecture (vocabulary, image size).
std::unique_ptr<DataSource> open_data(const Config& config, const ArchSummary& arch);
/// The same for any data spec (evaluate.data, heal.data); pixels normalise as `model_dir` says.
std::unique_ptr<DataSource> open_data_spec(const DataSpec& spec, const ArchSummary& arch,
                                           const std::filesystem::path& model_dir);
/// The teacher cache of the run's data, and of heal.data (empty when there is none), from the
/// fingerprint the teacher_cache stage published ("<data>" or "<data>+<heal data>").
std::filesystem::path run_cache_dir(const Config& config, const std::map<std::string, std::string>& fingerprints);
std::filesystem::path heal_cache_dir(const Config& config, const std::map<std::string, std::string>& fingerprints);
/// Reads the given samples, in order, as one batch.
Batch read_samples(const DataSource& data, const std::vector<int64_t>& samples);

/// The dense model of a run, loaded: checkpoint (which the weights map), architecture, model.
struct LoadedModel {
  HfCheckpoint checkpoint;
  const ModelAdapter* adapter = nullptr;
  ArchSummary arch;
  ModelShape shape;
  std::unique_ptr<Model> model;
};
/// The device this rank computes on, as `run.device` asks (core/dist/device.h decides; every stage calls this).
at::Device run_device(const Config& config);
/// The communicator of `dist.backend` for tensors on `device` (auto: NCCL for GPUs, MPI for the CPU).
std::unique_ptr<Communicator> run_communicator(const Config& config, const at::Device& device);
/// Moves a batch's tensors to `device`.
Batch to_device(const Batch& batch, const at::Device& device);
/// Opens and loads `model.path` in the compute dtype on `device`; only the summary when `weights` is false.
LoadedModel load_model(const Config& config, bool weights = true, const at::Device& device = at::kCPU);

/// The gates the run trains: the config's, except that an architecture coupling heads and hidden (hidden_size =
/// heads x head size in transformers), so either kind turns the other on. ConfigError when [gates]
/// turns every kind off, or asks for layer gates where blocks cannot be dropped (gates.layers).
GatesConfig effective_gates(const Config& config, const ModelShape& shape);

/// Log-alpha of every enabled gate in one fp32 vector, heads [L, H] then ffn [L, F] then hidden [D] then layers [L]:
/// the one all-reduce bucket of training. The per-kind tensors are views into it.
class GateParameters {
 public:
  GateParameters(const GatesConfig& config, const GateShape& shape);
  at::Tensor flat;                        ///< [P]
  at::Tensor heads, ffn, hidden, layers;  ///< views of flat; undefined where that kind is off

  /// Per-kind views of any tensor laid out like flat (a gate sample, a gradient).
  struct Views {
    at::Tensor heads, ffn, hidden, layers;
  };
  Views views_of(const at::Tensor& like_flat) const;
  /// Moves the parameters (and their views) to `device`.
  void to(const at::Device& device);
  /// Expected structure counts (sums of keep probabilities), differentiable in flat.
  GateCounts expected_counts(const HardConcrete& hc) const { return expected_counts(hc, flat); }
  /// The same for another vector laid out like flat.
  GateCounts expected_counts(const HardConcrete& hc, const at::Tensor& like_flat) const;
  /// Counts of nonzero evaluation gates (HardConcrete::evaluation).
  GateCounts evaluation_counts(const HardConcrete& hc) const { return evaluation_counts(hc, flat); }
  GateCounts evaluation_counts(const HardConcrete& hc, const at::Tensor& like_flat) const;
  /// The per-kind log-alphas by name ("heads.log_alpha", ...), for files.
  std::vector<safetensors::NamedTensor> named() const;
  /// Loads log-alphas written by named() into flat; CheckpointError naming the file on a mismatch.
  void load(const safetensors::Reader& file);

 private:
  GateShape shape_;
  int64_t n_heads_ = 0, n_ffn_ = 0, n_hidden_ = 0, n_layers_ = 0;
};

/// The run's budget, built once from [budget] and the model's shape: its metric and target, the forward pass a
/// latency is priced at (budget.latency_mode: a prefill of latency_batch x seq_len tokens, or one decode step of
/// latency_batch sequences against decode_context cached keys) and the device's rates. The one type training's
/// differentiable term (BudgetCost) and the rounding search both price shapes with; the search adds its latency
/// table. ConfigError naming budget.latency_mode for a decode budget on a model that does not decode (not causal).
CostSpec budget_spec(const Config& config, const ModelShape& shape);

/// The cost ratio (of the dense model) of gate counts under a budget (the roofline model: training's term is
/// differentiable; a measured latency table prices only the search's integer shapes).
class BudgetCost {
 public:
  BudgetCost(const CostSpec& budget, const ModelShape& shape);
  at::Tensor ratio(const GateCounts& counts) const;
  double ratio_of(const GateCounts& counts) const;

 private:
  ParameterScope scope() const {
    return spec_.metric == BudgetMetric::non_embedding_params ? ParameterScope::non_embedding : ParameterScope::all;
  }
  CostSpec spec_;
  ModelShape shape_;
  double dense_ = 1;
};

/// What a pruned student multiplies its kept structures by, indexed like the dense model (fp32, host):
/// heads [layers, heads] and ffn [layers, ffn] (0 for the structures the plan removes, and every row of a
/// dropped layer), attn_out and mlp_out [layers, hidden] (the output scales of each block's last
/// projection; undefined = 1). The export folds them into o_proj / down_proj; calibrate fits them. The
/// sliced forms ([kept layers, kept]) hold the plan's kept layers only.
struct Scales {
  at::Tensor heads, ffn, attn_out, mlp_out;
  /// 1 on every structure the plan keeps, 0 on the rest; no output scales.
  static Scales ones(const Plan& plan);
  /// The scales of a model sliced to the plan's shape (per kept structure, [layers, kept]) spread to the
  /// dense indices.
  static Scales from_sliced(const Plan& plan, const GateValues& sliced);
  /// The inverse: per kept structure, for a model sliced to the plan's shape (attn_out/mlp_out at the
  /// kept hidden channels).
  GateValues sliced(const Plan& plan) const;
  std::vector<safetensors::NamedTensor> named() const;
  /// CheckpointError naming the file when it does not hold scales for this plan.
  static Scales read(const std::filesystem::path& file, const Plan& plan);
};

/// The hard-gated student of a plan: the dense model's gate values (the scales, the 0/1 mask of the
/// kept hidden channels when hidden channels are pruned, of the kept blocks when blocks are dropped).
/// Its logits equal the pruned export's.
GateValues student_gates(const Plan& plan, const Scales& scales);

/// The pruned model of `plan` in memory: the dense checkpoint sliced, `scales` folded into the output
/// projections, its config.json with the plan's counts.
HfCheckpoint pruned_checkpoint(const LoadedModel& dense, const Plan& plan, const Scales& scales);
/// The student the stages after calibrate start from: calibrate.reconstruct's refitted weights when calibrate
/// published them in `reconstructed` for the run's calibration (`calibrate_fingerprint`, in the file's
/// metadata), else the calibrated slice (pruned_checkpoint). CheckpointError naming the file when it is not
/// the pruned model's or belongs to another calibration.
HfCheckpoint student_checkpoint(const LoadedModel& dense, const Plan& plan, const Scales& scales,
                                const std::filesystem::path& reconstructed, const std::string& calibrate_fingerprint);
/// Whether `reconstructed` holds refitted weights published by the calibration of `calibrate_fingerprint`.
bool has_reconstruction(const std::filesystem::path& reconstructed, const std::string& calibrate_fingerprint);

}  // namespace hawada
