#include "pipeline/runner.h"

#include <chrono>

#include "core/errors.h"
#include "core/fs.h"
#include "core/log.h"
#include "core/mpi_session.h"
#include "core/process.h"
#include "stages/teacher_cache.h"

namespace hawada {

std::vector<std::unique_ptr<Stage>> pipeline_stages() {
  std::vector<std::unique_ptr<Stage>> stages;
  stages.push_back(std::make_unique<TeacherCacheStage>());
  return stages;
}

void run_stages(const Config& config, const std::vector<std::unique_ptr<Stage>>& stages) {
  const StageContext ctx{config, config.run.dir};
  const auto markers = config.run.dir / "stages";
  if (process_info().rank == 0) std::filesystem::create_directories(markers);
  for (const auto& stage : stages) {
    const std::string name(stage->name());
    const std::string fp = with_context(name + ": ", [&] { return stage->fingerprint(ctx); });
    const auto marker = markers / (name + ".done");
    // Rank 0 decides and every rank follows, so all ranks call the same collectives even where the
    // run directory is not shared.
    uint64_t skip = 0;
    if (process_info().rank == 0) skip = std::filesystem::exists(marker) && read_text_file(marker) == fp + "\n";
    if (world::broadcast(skip)) {
      log::info(name + ": skipped, its marker matches the inputs (" + fp + ")");
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    with_context(name + ": ", [&] { stage->run(ctx); });
    world::barrier();
    if (process_info().rank == 0) atomic_write_text(marker, fp + "\n");
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log::info(name + ": done in " + std::to_string(s).substr(0, 6) + " s");
  }
}

}  // namespace hawada
