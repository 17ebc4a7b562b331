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
#include "pipeline/tools/runtime_rates.h"
#include "runtimes/tool.h"
#include "stages/layout.h"
#include "training/student.h"

namespace hawada {
namespace {

// Whether rank 0 may reuse the rates file of an earlier try of this run: measured the way the config asks.
bool reusable_rates(const std::filesystem::path& file, const Config& c, int threads, const ModelShape& dense) {
  if (!std::filesystem::exists(file)) return false;
  try {
    const RuntimeRates r = read_runtime_rates(file);
    return r.type == c.budget.gguf && r.threads == threads && r.context == c.budget.decode_context &&
           r.dense == shape_key(dense);
  } catch (const Error& e) {
    log::warn(std::string("budget: measuring again: ") + e.what());
    return false;
  }
}

// Rank 0 measures llama.cpp's decode rates into <run>/budget/rates.json (unless an earlier try of this run did);
// every rank hears whether it could.
void measure_rates_on_rank0(const Config& c, const RunLayout& layout, int threads, const ModelShape& dense) {
  std::exception_ptr failed;
  if (process_info().rank == 0) try {
      if (reusable_rates(layout.budget_rates(), c, threads, dense)) {
        log::info("budget: reusing llama.cpp's decode rates in " + layout.budget_rates().string());
      } else {
        log::info("budget: measuring llama.cpp's decode rates on this machine (budget.runtime = \"llama.cpp\")");
        measure_runtime_rates(c.model.path, layout.budget_rates(), layout.dir() / "budget" / "work",
                              {c.export_.llama_cpp, c.export_.python, c.budget.gguf, threads, c.budget.decode_context});
      }
    } catch (...) {  // every rank hears of it before rank 0 rethrows
      failed = std::current_exception();
    }
  const uint64_t status = world::broadcast(failed ? 1 : 0);
  if (failed) std::rethrow_exception(failed);
  if (status) throw RuntimeToolError("budget: rank 0 could not measure llama.cpp's decode rates (its error says why)");
}

// budget.runtime = "llama.cpp": llama.cpp's decode rates on this machine (measured by rank 0, or read from
// budget.rates) replace the [budget] rates on every rank before any stage, and so enter every budget fingerprint.
void resolve_runtime_rates(Config& c, const RunLayout& layout, const ModelShape& dense, bool dry_run) {
  if (c.budget.runtime != BudgetRuntime::llama_cpp) return;
  const int threads =
      c.budget.threads > 0 ? c.budget.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const bool given = !c.budget.rates.empty();
  const std::filesystem::path file = given ? c.budget.rates : layout.budget_rates();
  if (!given && dry_run) {
    log::info("budget: would " + std::string(reusable_rates(file, c, threads, dense) ? "reuse" : "measure") +
              " llama.cpp's decode rates: " + file.string());
    if (!std::filesystem::exists(file)) return;
  }
  if (!given && !dry_run) measure_rates_on_rank0(c, layout, threads, dense);
  const RuntimeRates r = read_runtime_rates(file);
  if (r.dense != shape_key(dense))
    throw ConfigError(c.source.string() + ": budget.rates '" + file.string() + "' was measured on a model of " +
                      std::to_string(r.dense[0]) + " blocks, hidden " + std::to_string(r.dense[1]) + ", FFN " +
                      std::to_string(r.dense[4]) + "; model.path has " + std::to_string(dense.layers) +
                      " blocks, hidden " + std::to_string(dense.hidden) + ", FFN " + std::to_string(dense.ffn));
  if (given && (r.type != c.budget.gguf || r.context != c.budget.decode_context ||
                (c.budget.threads > 0 && r.threads != c.budget.threads)))
    throw ConfigError(c.source.string() + ": budget.rates '" + file.string() + "' was measured for GGUF " +
                      std::string(to_string(r.type)) + " at a KV cache of " + std::to_string(r.context) + ", " +
                      std::to_string(r.threads) + " threads; the config asks for " +
                      std::string(to_string(c.budget.gguf)) + " at " + std::to_string(c.budget.decode_context) +
                      (c.budget.threads > 0 ? ", " + std::to_string(c.budget.threads) + " threads" : std::string()));
  c.budget.device_flops = r.rates.flops_per_s;
  c.budget.device_bandwidth = r.rates.bytes_per_s;
  c.budget.layer_overhead_s = r.rates.layer_overhead_s;
  log::info("budget: llama.cpp " + std::string(to_string(r.type)) + " decode rates from " + file.string() +
            ": device_bandwidth " + std::to_string(r.rates.bytes_per_s) + ", layer_overhead_s " +
            std::to_string(r.rates.layer_overhead_s) + " (fitted within " +
            std::to_string(100 * r.max_fit_error).substr(0, 4) + "%)");
}

}  // namespace

void run_pipeline(const std::filesystem::path& config_file, const MpiSession& mpi, const RunOptions& options) {
  Config config = load_config(config_file);
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
  resolve_runtime_rates(config, layout, shape, options.dry_run);
  if (config.budget.runtime == BudgetRuntime::llama_cpp && mpi.rank() == 0 && !options.dry_run)
    atomic_write_text(layout.resolved_config(), to_toml(config));  // with the rates the stages price shapes by

  // Every rank reaches this point or the job is aborted by main: no rank goes on alone.
  world::barrier();
  run_stages(config, stages, options);
}

}  // namespace hawada
