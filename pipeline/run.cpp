#include "pipeline/run.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <thread>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/base/fault.h"
#include "core/base/fs.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/dist/mpi_session.h"
#include "core/io/checkpoint.h"
#include "pipeline/config.h"
#include "pipeline/runner.h"
#include "stages/layout.h"
#include "training/student.h"

namespace hawada {

void run_pipeline(const std::filesystem::path& config_file, const MpiSession& mpi, const RunOptions& options) {
  const Config config = load_config(config_file);
  const auto& proc = process_info();
  // Each rank gets its share of the node's cores unless the config says otherwise; under mpirun,
  // OpenMP would otherwise give every rank all cores and oversubscribe the node.
  int threads = config.run.threads_per_rank;
  if (threads == 0)
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / std::max(1, proc.local_size));
  at::set_num_threads(threads);
  log::info("hawada-pipeline " HAWADA_VERSION ": " + std::to_string(proc.size) + " rank(s), " +
            std::to_string(threads) + " thread(s) per rank, config " + config.source.string());

  const RunLayout layout(config.run.dir);
  const auto stages = pipeline_stages();
  check_stage_names(options, stages);
  if (!options.dry_run) {
    std::filesystem::create_directories(layout.logs());
    log::open_rank_file(layout.rank_log(mpi.rank()));
  }
  if (mpi.rank() == 0 && !options.dry_run) {
    std::filesystem::create_directories(config.run.dir);
    atomic_write_text(layout.resolved_config(), to_toml(config));
    log::info("resolved config written to " + layout.resolved_config().string());
  }

  const HfCheckpoint model = with_context("loading model: ", [&] { return HfCheckpoint::open(config.model.path); });
  const auto config_json = config.model.path / "config.json";
  const ArchSummary arch = adapter_for(model.config(), config_json).summarize(model.config(), config_json);
  log::info("model " + arch.architecture + ": " + std::to_string(arch.layers) + " layers, hidden " +
            std::to_string(arch.hidden) + ", " + std::to_string(arch.heads) + " heads, " +
            std::to_string(model.total_numel()) + " parameters in " + std::to_string(model.weight_files().size()) +
            " weight file(s)");
  // Settings that only the model can judge, before any stage spends time: gates the architecture cannot
  // take (gates.layers), a decode budget on a model that does not decode (budget.latency_mode).
  const ModelShape shape = model_shape(arch);
  effective_gates(config, shape);
  budget_spec(config, shape);
  fault_point("run.after_model");

  // Every rank reaches this point or the job is aborted by main: no rank goes on alone.
  world::barrier();
  run_stages(config, stages, options);
}

}  // namespace hawada
