#include "pipeline/runner.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/fs.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/dist/communicator.h"
#include "core/dist/device.h"
#include "core/dist/mpi_session.h"
#include "core/prune/matmul_precision.h"
#include "pipeline/config.h"
#include "stages/calibrate.h"
#include "stages/evaluate.h"
#include "stages/export.h"
#include "stages/heal.h"
#include "stages/layout.h"
#include "stages/reduce_gates.h"
#include "stages/report.h"
#include "stages/rounding_search.h"
#include "stages/teacher_cache.h"
#include "stages/train_gates.h"
#include "training/student.h"

namespace hawada {

std::vector<std::unique_ptr<Stage>> pipeline_stages() {
  std::vector<std::unique_ptr<Stage>> stages;
  stages.push_back(std::make_unique<TeacherCacheStage>());
  stages.push_back(std::make_unique<TrainGatesStage>());
  stages.push_back(std::make_unique<ReduceGatesStage>());
  stages.push_back(std::make_unique<RoundingSearchStage>());
  stages.push_back(std::make_unique<CalibrateStage>());
  stages.push_back(std::make_unique<HealStage>());
  stages.push_back(std::make_unique<ExportStage>());
  stages.push_back(std::make_unique<EvaluateStage>());
  stages.push_back(std::make_unique<ReportStage>());
  return stages;
}

void check_stage_names(const RunOptions& o, const std::vector<std::unique_ptr<Stage>>& stages) {
  std::string known;
  for (const auto& s : stages) known += (known.empty() ? "" : ", ") + std::string(s->name());
  auto check = [&](const std::string& name, const char* option) {
    for (const auto& s : stages)
      if (s->name() == name) return;
    throw UsageError(std::string(option) + ": unknown stage '" + name + "' (stages: " + known + ")");
  };
  for (const auto& n : o.only) check(n, "--stages");
  if (!o.from.empty()) check(o.from, "--from");
  for (const auto& n : o.force) check(n, "--force");
}

namespace {
// What model.head_matmul came to on this machine.
void log_head_matmul(const Config& c) {
  if (bf16_head(c))
    log::info("LM head: bf16 products with fp32 accumulation and fp32 logits (model.head_matmul; native bf16 here)");
  else if (c.model.head_matmul == HeadMatmul::bf16 && c.model.dtype == ComputeDtype::fp32)
    log::warn(
        "model.head_matmul = \"bf16\" runs on CPUs whose LibTorch runs fp32 products in bf16 (measured at start; "
        "AMX machines; not on GPUs yet): the LM head runs in fp32 here");
}
// After a stage: its time and the peak memory of every rank (host RSS since the stage began, and the device's), the
// largest over the ranks logged and kept in <run>/memory.json beside the other stages' last runs.
void record_stage_memory(const RunLayout& layout, const std::string& name, double seconds, const at::Device& device) {
  const int64_t host = peak_host_memory(), dev = peak_device_memory(device);
  const int64_t host_max = world::max(host), dev_max = world::max(dev);
  const int64_t host_sum = world::sum(host);
  auto gib = [](int64_t bytes) { return static_cast<double>(bytes) / (1ull << 30); };
  log::info(
      fmt::format("{}: done in {:.2f} s (peak memory: host RSS {:.2f} GiB on the largest rank, {:.2f} GiB on all "
                  "{}; device {:.2f} GiB on the largest)",
                  name, seconds, gib(host_max), gib(host_sum), process_info().size, gib(dev_max)));
  if (process_info().rank != 0) return;
  nlohmann::json memory = nlohmann::json::object();
  if (std::filesystem::exists(layout.memory())) {
    memory = nlohmann::json::parse(read_text_file(layout.memory()), nullptr, false);
    if (!memory.is_object()) memory = nlohmann::json::object();  // a torn or foreign file: start over
  }
  memory[name] = {{"seconds", seconds},
                  {"ranks", process_info().size},
                  {"peak_host_rss_bytes_max_rank", host_max},
                  {"peak_host_rss_bytes_all_ranks", host_sum},
                  {"peak_device_bytes_max_rank", dev_max}};
  atomic_write_text(layout.memory(), memory.dump(2) + "\n");
}
}  // namespace

void run_stages(const Config& config, const std::vector<std::unique_ptr<Stage>>& stages, const RunOptions& options) {
  check_stage_names(options, stages);
  StageContext ctx{config, config.run.dir, {}, config_sections(config)};
  // The device is decided once, here, before any stage (a `cuda` request on a node without a GPU fails
  // now, not after the teacher forward); every stage asks run_device(config) for the same answer.
  const at::Device device = pick_device(config.run.device, process_info().local_rank);
  if (!options.dry_run) log::info("device: " + describe_device(device));
  set_bf16_head_matmul(bf16_head(config));
  world::set_timeout(config.dist.timeout_s);
  if (!options.dry_run) log_head_matmul(config);
  const RunLayout layout(config.run.dir);
  const auto markers = layout.markers();
  if (process_info().rank == 0 && !options.dry_run) std::filesystem::create_directories(markers);
  bool from_reached = false;
  for (const auto& stage : stages) {
    const std::string name(stage->name());
    const bool selected =
        options.only.empty() || std::find(options.only.begin(), options.only.end(), name) != options.only.end();
    from_reached = from_reached || name == options.from;
    const bool forced =
        from_reached || std::find(options.force.begin(), options.force.end(), name) != options.force.end();
    // Every stage's fingerprint is computed, selected or not: later stages chain it.
    const std::string fp = with_context(name + ": ", [&] { return stage->fingerprint(ctx); });
    ctx.fingerprints[name] = fp;
    const auto marker = layout.marker(name);
    // Rank 0 decides and every rank follows, so all ranks call the same collectives even where the
    // run directory is not shared.
    uint64_t skip = 0;
    if (process_info().rank == 0) skip = std::filesystem::exists(marker) && read_text_file(marker) == fp + "\n";
    skip = world::broadcast(skip);
    if (options.dry_run) {
      log::info(name + ": " +
                (!selected         ? "not selected"
                 : skip && !forced ? "reuse (marker matches " + fp + ")"
                 : forced          ? "run (forced)"
                                   : "run (inputs " + fp + ")"));
      continue;
    }
    if (!selected) {
      log::info(name + ": not selected (--stages)");
      continue;
    }
    if (skip && !forced) {
      log::info(name + ": skipped, its marker matches the inputs (" + fp + ")");
      continue;
    }
    if (process_info().rank == 0) std::filesystem::remove(marker);
    const auto t0 = std::chrono::steady_clock::now();
    reset_peak_device_memory(device);
    reset_peak_host_memory();
    set_comm_context(name);
    with_context(name + ": ", [&] { stage->run(ctx); });
    world::barrier();
    if (process_info().rank == 0) atomic_write_text(marker, fp + "\n");
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    record_stage_memory(layout, name, s, device);
  }
}

}  // namespace hawada
