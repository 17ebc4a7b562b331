// The runner: the one list of stages, their order, and skip-by-marker. A stage whose marker
// <run_dir>/stages/<name>.done holds the fingerprint of its current inputs is skipped; otherwise it
// runs (resuming from its own partial outputs) and rank 0 writes the marker last.
#pragma once

#include <memory>
#include <vector>

#include "stages/stage.h"

namespace hawada {

/// The pipeline's stages, in order.
std::vector<std::unique_ptr<Stage>> pipeline_stages();

/// Runs `stages` for `config` on every rank (collective).
void run_stages(const Config& config, const std::vector<std::unique_ptr<Stage>>& stages);

}  // namespace hawada
