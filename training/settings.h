// The run settings as typed data: what every stage reads. Parsed from TOML by pipeline/config.h,
// which owns the defaults, ranges and error messages; kept here, free of TOML, so that stages (which
// must not include pipeline/) can take them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/dist/device.h"
#include "core/prune/budget_metric.h"
#include "runtimes/gguf_type.h"

namespace hawada {

/// Dtype the student and teacher compute in (`model.dtype`).
enum class ComputeDtype { fp32, bf16 };
/// The LM head's matrix products in an fp32 model (`model.head_matmul`): bf16 products with fp32 accumulation
/// and fp32 results where the CPU has native bf16 (`auto`: AMX or AVX512-BF16), or fp32 throughout.
enum class HeadMatmul { auto_, fp32, bf16 };
/// Layout of the training data file (`data.format`).
enum class DataFormat { tokens_h5, tokens_bin, images_h5 };
/// Element type of a flat binary token file (`data.token_dtype`, for tokens_bin).
enum class TokenDtype { uint16, uint32 };
/// Dtype of the stored teacher top-k logits (`teacher.store_dtype`).
enum class StoreDtype { fp16, bf16 };
/// What the teacher cache keeps of an LM's logits (`teacher.logits`): the top-k with the log-sum-exp, or
/// `samples` tokens drawn from the teacher's distribution (distinct ids with counts, and its entropy).
enum class TeacherLogits { top_k, sampled };
/// The forward pass a latency budget prices (`budget.latency_mode`): a prefill of `latency_batch` x
/// seq_len tokens, or one decode step of `latency_batch` sequences (one new token each, KV cache of
/// `decode_context` tokens).
enum class LatencyMode { prefill, decode };
/// Where a decode budget's rates come from (`budget.runtime`): the [budget] keys as written (`model`), or
/// llama.cpp's decode measured on this machine (`llama_cpp`, spelled "llama.cpp"): the rates fitted to cut
/// copies of the model timed by llama-bench (pipeline/tools/runtime_rates.h), or read from `budget.rates`.
enum class BudgetRuntime { model, llama_cpp };
/// Dtype of the exported weights; `keep` keeps the checkpoint's own (`export.dtype`).
enum class ExportDtype { keep, bf16, fp32 };
/// calibrate.reconstruct_order: whether the least-squares refit runs after the scale fit (the projections it
/// refits drop their scales; the others keep theirs) or before it (the scales are fitted on the refit).
enum class RefitOrder { after_scales, before_scales };
/// heal.keep: the weights heal publishes: those of its last step, or of the step with the best held-out KL.
enum class HealKeep { last, best };
/// evaluate.runtimes: where evaluate measures the export besides its quality: hawada-pipeline's own LibTorch
/// runtime (forward latency, generate) and llama.cpp (its tools on export.gguf's files).
enum class EvalRuntime { libtorch, llama_cpp };
/// Communicator backend (`dist.backend`); `auto_` is spelled "auto" in TOML.
enum class DistBackend { auto_, mpi, nccl };

/// [run]: where outputs go and process-level knobs.
struct RunConfig {
  std::filesystem::path dir;  ///< Default: runs/<config file stem> next to the config file.
  int64_t seed = 0;
  int threads_per_rank = 0;                     ///< 0 = automatic.
  DeviceRequest device = DeviceRequest::auto_;  ///< auto = the local GPU when LibTorch sees one, else the CPU.
  bool operator==(const RunConfig&) const = default;
};

/// [model]: the dense Hugging Face model to prune.
struct ModelConfig {
  std::filesystem::path path;  ///< Required; an existing directory holding config.json.
  ComputeDtype dtype = ComputeDtype::bf16;
  HeadMatmul head_matmul = HeadMatmul::auto_;
  bool operator==(const ModelConfig&) const = default;
};

/// [data]: the calibration / training data.
struct DataConfig {
  DataFormat format = DataFormat::tokens_h5;
  std::filesystem::path path;  ///< Required; an existing regular file.
  int64_t seq_len = 512;
  int64_t samples = 0;                          ///< 0 = all.
  TokenDtype token_dtype = TokenDtype::uint16;  ///< tokens_bin only.
  bool operator==(const DataConfig&) const = default;
};

/// [teacher]: the cached teacher logits.
struct TeacherConfig {
  /// The model the cache distills from; empty: model.path (the model being pruned). Another causal LM with the same
  /// vocabulary, e.g. the dense model when model.path is an earlier round's cut (a progressive cut by hand).
  std::filesystem::path model;
  std::filesystem::path cache_root;  ///< Default: runs/teacher-cache next to the config file.
  /// Default (pipeline/config.cpp): sampled, or top_k when the config sets teacher.top_k, train.kd_temperature
  /// != 1 or train.mse_weight != 0.
  TeacherLogits logits = TeacherLogits::sampled;
  int top_k = 64;
  int samples = 12;  ///< logits = sampled: draws per position (<= 255)
  int64_t seed = 0;  ///< logits = sampled: the draws' seed (part of the cache's key, not the run's)
  StoreDtype store_dtype = StoreDtype::bf16;
  int batch_size = 8;
  bool operator==(const TeacherConfig&) const = default;
};

/// [gates]: which structures get gates, and the hard-concrete gate parameters.
struct GatesConfig {
  bool heads = true;
  bool ffn = true;
  bool hidden = false;
  bool layers = false;  ///< one gate per block (attention + MLP): depth pruning
  double init = 0.9;
  double temperature = 2.0 / 3.0;
  bool operator==(const GatesConfig&) const = default;
};

/// [train]: the gate-training schedule and loss weights.
struct TrainConfig {
  int64_t steps = 1000;
  int micro_batch = 4;
  int grad_accum = 1;
  double lr = 0.05;
  int64_t warmup = 100;  ///< At most `steps`.
  double kd_temperature = 1.0;
  double mse_weight = 0.0;
  int64_t checkpoint_every = 200;
  int64_t holdout = 16;         ///< The last samples of the data, never trained on: export verification.
  int importance_batches = 16;  ///< Micro-batches (in all) the importance pass before training measures.
  bool operator==(const TrainConfig&) const = default;
};

/// [budget]: the size the pruned model must reach, as a ratio of the dense model.
struct BudgetConfig {
  BudgetMetric metric = BudgetMetric::params;
  double target = 0.5;
  int64_t latency_batch = 1;  ///< Sequences (images) per forward the latency is modelled at.
  LatencyMode latency_mode = LatencyMode::prefill;
  int64_t decode_context = 256;  ///< Tokens in the KV cache of a decode step (latency_mode = decode).
  double layer_overhead_s = 0;   ///< Fixed seconds per block per forward (kernel launches, dispatch); 0: roofline only.
  double device_flops = 989e12;  ///< Target device's dense bf16 FLOP/s (default: H100 SXM).
  double device_bandwidth = 3.35e12;  ///< Target device's memory bandwidth in bytes/s (default: H100 SXM).
  /// `llama_cpp`: device_flops, device_bandwidth and layer_overhead_s are replaced, before any stage, by llama.cpp's
  /// decode rates on this machine, for GGUF type `gguf` at `threads` threads (0: every CPU).
  BudgetRuntime runtime = BudgetRuntime::model;
  GgufType gguf = GgufType::q8_0;
  int threads = 0;
  std::filesystem::path rates;  ///< A rates file (hawada-pipeline profile --runtime llama.cpp) instead of measuring.
  bool operator==(const BudgetConfig&) const = default;
};

/// [search]: how gate scores become a concrete architecture.
struct SearchConfig {
  int ffn_multiple = 256;
  int hidden_multiple = 128;
  std::filesystem::path latency_table;  ///< Empty = analytic latency model.
  bool prune_kv_groups = false;
  int probe_shapes = 4;  ///< Candidate shapes (each the widest at its head/hidden counts) measured by a short fit.
  /// Calibration steps of each probe: 8 misranked two near-tied depth cuts that 32 ranked as the full calibration
  /// did (bench/NOTES.md, issue 35).
  int64_t probe_steps = 32;
  int64_t probe_samples = 16;  ///< Training samples each probe's KL is measured on.
  bool operator==(const SearchConfig&) const = default;
};

/// [calibrate]: the kept structures' scales fitted to the teacher at the chosen shape (weights frozen).
struct CalibrateConfig {
  int64_t steps = 100;  ///< 0: the plain 0/1 masks (every scale 1).
  double lr = 0.03;
  int64_t warmup = 10;
  int micro_batch = 0;        ///< 0 = train.micro_batch.
  int grad_accum = 0;         ///< 0 = train.grad_accum.
  bool output_scales = true;  ///< also one scale per output channel of o_proj / down_proj (per layer)
  int64_t checkpoint_every = 50;
  /// Refit every kept block's o_proj / down_proj by least squares on the kept heads and FFN channels
  /// (training/reconstruct.h), after or before the scale fit (reconstruct_order).
  bool reconstruct = false;
  int64_t reconstruct_samples = 256;  ///< training samples the refit's statistics come from
  bool reconstruct_attention = true;  ///< false: the MLP down projections only
  RefitOrder reconstruct_order = RefitOrder::after_scales;
  /// When the plan drops blocks of a causal LM: the MLP down projection of the kept block before each span of
  /// dropped blocks is refitted by least squares so that the stream leaving it is the teacher's at the span's end.
  bool refit_spans = true;
  bool operator==(const CalibrateConfig&) const = default;
};

/// [heal]: distillation of the pruned model's weights from the teacher cache (off when steps = 0).
struct HealConfig {
  int64_t steps = 0;
  double lr = 1e-4;
  int64_t warmup = 20;
  int micro_batch = 0;  ///< 0 = train.micro_batch.
  int grad_accum = 0;   ///< 0 = train.grad_accum.
  double weight_decay = 0.0;
  double clip = 1.0;  ///< global gradient-norm clip (0 = none)
  /// "all", or a comma-separated list of attention, mlp, norm, embedding, head. The default leaves the embedding
  /// tables frozen (and a head tied to them): on a 1 M-token heal of a depth cut of SmolLM2-135M, 4% lower held-out
  /// perplexity than "all" (bench/NOTES.md), where AdamW moved the rows of tokens the heal data rarely holds.
  std::string train = "attention,mlp,norm,head";
  int64_t checkpoint_every = 100;
  int64_t eval_every = 50;     ///< steps between held-out KL measurements (0 = only at the end)
  std::filesystem::path data;  ///< Empty: heal on the run's training samples; else the samples of this file
  int64_t samples = 0;         ///< of `data`: the first this many (0 = all); its teacher cache holds only these
  /// Weight of the intermediate-state term: the relative squared distance of the student's residual stream leaving
  /// each kept block to the dense teacher's at the matching boundary (the teacher runs forward in each step). 0: off.
  double hidden_weight = 0;
  HealKeep keep =
      HealKeep::last;  ///< best: the weights of the evaluation (every eval_every steps) with the lowest held-out KL
  bool operator==(const HealConfig&) const = default;
};

/// [evaluate]: how the export's quality and speed are measured.
struct EvaluateConfig {
  std::filesystem::path data;  ///< Empty: the run's held-out samples; else a file of data.format.
  int64_t samples = 0;         ///< 0 = every held-out sample (or every sample of `data`).
  int latency_repeats = 10;
  std::vector<EvalRuntime> runtimes = {EvalRuntime::libtorch};
  /// Threads of the llama.cpp measurements (llama-bench, llama-perplexity); 0 = this machine's cores.
  int threads = 0;
  bool has(EvalRuntime r) const { return std::find(runtimes.begin(), runtimes.end(), r) != runtimes.end(); }
  bool operator==(const EvaluateConfig&) const = default;
};

/// [export]: the pruned checkpoint written at the end.
struct ExportConfig {
  std::string name = "slim";                   ///< A plain file name: no '/' or '\\', not "." or "..".
  uint64_t max_shard_size = 5'000'000'000ULL;  ///< Bytes; TOML also accepts "5GB", "2GiB", ...
  ExportDtype dtype = ExportDtype::keep;
  std::string base_model;  ///< The base model's Hub id for the model card (e.g. "meta-llama/Llama-3.2-1B"); empty: the
                           ///< model directory's name.
  /// GGUF files written beside the export by llama.cpp's own tools, each type once; empty: none.
  std::vector<GgufType> gguf;
  /// llama.cpp's source directory (holds convert_hf_to_gguf.py; llama-quantize in its build/bin/ or on PATH);
  /// required when `gguf` is non-empty.
  std::filesystem::path llama_cpp;
  std::string python = "python3";  ///< The Python that runs the converter (needs torch, gguf, sentencepiece).
  bool operator==(const ExportConfig&) const = default;
};

/// [dist]: the communicator.
struct DistConfig {
  DistBackend backend = DistBackend::auto_;
  double timeout_s = 600;
  int64_t check_every = 100;  ///< Steps between cross-rank checks that the gate parameters are identical.
  bool operator==(const DistConfig&) const = default;
};

/// The whole resolved configuration; `source` is the absolute path of the file it came from.
struct Config {
  std::filesystem::path source;
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  TeacherConfig teacher;
  GatesConfig gates;
  TrainConfig train;
  BudgetConfig budget;
  SearchConfig search;
  CalibrateConfig calibrate;
  HealConfig heal;
  ExportConfig export_;  ///< The [export] section (`export` is a C++ keyword).
  EvaluateConfig evaluate;
  DistConfig dist;
  bool operator==(const Config&) const = default;
};

/// The teacher's model directory: teacher.model, else model.path.
inline const std::filesystem::path& teacher_model(const Config& c) {
  return c.teacher.model.empty() ? c.model.path : c.teacher.model;
}

}  // namespace hawada
