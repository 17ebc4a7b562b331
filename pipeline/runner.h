// The runner: the one list of stages, their order, and skip-by-marker. A stage whose marker
// <run_dir>/stages/<name>.done holds the fingerprint of its current inputs is skipped; otherwise it
// runs (resuming from its own partial outputs) and rank 0 writes the marker last.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "stages/stage.h"

namespace hawada {

/// The pipeline's stages, in order.
std::vector<std::unique_ptr<Stage>> pipeline_stages();

/// Which stages `run` executes (the command-line flags).
struct RunOptions {
  std::vector<std::string> only;   ///< --stages a,b: run just these (others are neither run nor checked)
  std::string from;                ///< --from S: rerun S and every later stage even if their markers match
  std::vector<std::string> force;  ///< --force S (repeatable): rerun S even if its marker matches
  bool dry_run = false;            ///< --dry-run: print what would run and what would be reused; change nothing
};

/// UsageError naming the known stages when an option names an unknown one.
void check_stage_names(const RunOptions& options, const std::vector<std::unique_ptr<Stage>>& stages);

/// Runs `stages` for `config` on every rank (collective).
void run_stages(const Config& config, const std::vector<std::unique_ptr<Stage>>& stages,
                const RunOptions& options = {});

}  // namespace hawada
