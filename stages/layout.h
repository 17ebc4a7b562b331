// The one place that names the stages and the files a run leaves in its directory. Stages, the runner
// and the report find each other's outputs through these; nothing else spells a run-relative path.
//
//   <run_dir>/config.resolved.toml          the settings as resolved (pipeline/run.cpp)
//   <run_dir>/logs/rank-R.log               each rank's log
//   <run_dir>/stages/<stage>.done           markers: the fingerprint each finished stage ran with
//   <run_dir>/train/                        train_gates: metrics.jsonl, checkpoints/, gates.safetensors
//   <run_dir>/gates/scores.safetensors      reduce_gates
//   <run_dir>/plan/                         rounding_search: plan.json, candidates.csv
//   <run_dir>/calibrate/                    calibrate: metrics.jsonl, checkpoints/, scales.safetensors, summary.json,
//                                           weights.safetensors (calibrate.reconstruct)
//   <run_dir>/heal/                         heal: metrics.jsonl, checkpoints/, weights.safetensors, summary.json
//   <run_dir>/export/                       export: <export.name>/, summary.json (failed-summary.json)
//   <run_dir>/evaluate/evaluate.json        evaluate
//   <run_dir>/report/index.html             report
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "core/format/plan.h"

namespace hawada {

/// The stage names, in pipeline order: markers, logs, --stages/--from/--force and fingerprint chaining.
namespace stage_names {
inline constexpr std::string_view teacher_cache = "teacher_cache";
inline constexpr std::string_view train_gates = "train_gates";
inline constexpr std::string_view reduce_gates = "reduce_gates";
inline constexpr std::string_view rounding_search = "rounding_search";
inline constexpr std::string_view calibrate = "calibrate";
inline constexpr std::string_view heal = "heal";
inline constexpr std::string_view export_ = "export";
inline constexpr std::string_view evaluate = "evaluate";
inline constexpr std::string_view report = "report";
}  // namespace stage_names

/// Where a run's artifacts are, relative to its directory (`run.dir`).
class RunLayout {
 public:
  using path = std::filesystem::path;
  explicit RunLayout(path run_dir) : dir_(std::move(run_dir)) {}
  const path& dir() const { return dir_; }

  path resolved_config() const { return dir_ / "config.resolved.toml"; }
  path logs() const { return dir_ / "logs"; }
  path rank_log(int rank) const { return logs() / ("rank-" + std::to_string(rank) + ".log"); }
  path markers() const { return dir_ / "stages"; }
  path marker(std::string_view stage) const { return markers() / (std::string(stage) + ".done"); }
  path memory() const { return dir_ / "memory.json"; }  ///< each stage's last run: time and peak memory per rank

  // A training stage's directory holds metrics.jsonl (one line per step) and checkpoints/.
  static path metrics(const path& stage_dir) { return stage_dir / "metrics.jsonl"; }
  static path checkpoints(const path& stage_dir) { return stage_dir / "checkpoints"; }

  path train() const { return dir_ / "train"; }
  path trained_gates() const { return train() / "gates.safetensors"; }
  path gate_scores() const { return dir_ / "gates" / "scores.safetensors"; }
  path budget_rates() const { return dir_ / "budget" / "rates.json"; }  ///< budget.runtime's measured rates
  path plan_dir() const { return dir_ / "plan"; }
  path plan() const { return plan_dir() / "plan.json"; }
  path candidates() const { return plan_dir() / "candidates.csv"; }
  path calibrate() const { return dir_ / "calibrate"; }
  path scales() const { return calibrate() / "scales.safetensors"; }
  path calibrate_summary() const { return calibrate() / "summary.json"; }
  path reconstructed_weights() const { return calibrate() / "weights.safetensors"; }
  path heal() const { return dir_ / "heal"; }
  path healed_weights() const { return heal() / "weights.safetensors"; }
  path heal_summary() const { return heal() / "summary.json"; }
  path export_dir() const { return dir_ / "export"; }
  path exported_model(const std::string& name) const { return export_dir() / name; }
  path export_summary() const { return export_dir() / "summary.json"; }
  path failed_export_summary() const { return export_dir() / "failed-summary.json"; }
  path evaluate() const { return dir_ / "evaluate"; }
  path evaluation() const { return evaluate() / "evaluate.json"; }
  path report() const { return dir_ / "report"; }
  path report_page() const { return report() / "index.html"; }

 private:
  path dir_;
};

/// Reads the run's plan (RunLayout::plan) for the dense model of a run; CheckpointError naming the file on a
/// malformed plan.
Plan read_plan(const std::filesystem::path& run_dir, const ModelShape& dense);
/// XXH64 of the plan's canonical JSON: written into plan.json as "xxh64", checked by read_plan (CheckpointError
/// naming the file on a mismatch; a plan without it is read as it is).
std::string plan_checksum(const Plan& plan);

}  // namespace hawada
