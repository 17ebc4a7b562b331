// The `hawada-pipeline` command line: subcommands, exit codes, and the one place that turns an
// exception into a message and (under MPI) an abort of the whole job.
#pragma once

namespace hawada {

/// Exit codes of hawada-pipeline.
enum ExitCode : int { kExitOk = 0, kExitRuntime = 1, kExitUsage = 2 };

/// Entry point of the executable; returns the process exit code.
int cli_main(int argc, char** argv);

}  // namespace hawada
