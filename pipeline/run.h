// `hawada-pipeline run CONFIG`: the batch job. Every rank runs it under mpirun/srun.
#pragma once

#include <filesystem>

#include "pipeline/runner.h"

namespace hawada {

class MpiSession;

/// Runs the pipeline for `config_file` on every rank of `mpi`. Rank 0 writes the resolved config;
/// every rank opens and validates the model. Throws on any failure (main aborts the whole job).
void run_pipeline(const std::filesystem::path& config_file, const MpiSession& mpi, const RunOptions& options = {});

}  // namespace hawada
