// Running a deployment runtime's own tools (llama.cpp's converter, llama-quantize, ...) as child processes:
// the one place the pipeline starts other programs. Output goes to a log file, never to our stdout, so a
// tool's chatter does not interleave with the ranks' logs; a failure quotes the log's tail.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "core/base/errors.h"

namespace hawada {

/// A runtime's tool that started and failed (non-zero exit, killed by a signal, or no output where one was
/// promised). The message names the command, the exit status and the tail of the tool's output. A tool that
/// cannot be found or started is the configuration's fault: the caller throws ConfigError naming the key.
class RuntimeToolError : public Error {
 public:
  using Error::Error;
  const char* kind() const noexcept override { return "RuntimeToolError"; }
};

/// How a tool run ended.
struct ToolRun {
  int start_errno = 0;  ///< Non-zero: the program could not be started (ENOENT, EACCES, ...); nothing ran.
  int exit_code = 0;    ///< The exit status; 128 + N when killed by signal N.
  bool ok() const { return start_errno == 0 && exit_code == 0; }
};

/// Runs argv[0] (looked up on PATH when it has no '/') with `argv`, stdout and stderr both written to `log`
/// (created or truncated; stdout to `stdout_file` instead when one is given, for a tool whose stdout is its
/// result), stdin from /dev/null, and waits for it. The tool may run on every CPU this process may use, whatever
/// core mpirun bound the calling rank to. Throws IoError when a file cannot be opened.
ToolRun run_tool(const std::vector<std::string>& argv, const std::filesystem::path& log,
                 const std::filesystem::path& stdout_file = {});

/// The executable `name` in <dir>/build/bin/, in <dir>/ or on PATH (the first found); empty when none is.
std::filesystem::path find_program(const std::filesystem::path& dir, const std::string& name);

/// The last `bytes` bytes of a log (from the start of a line where one begins in them); "" when unreadable.
std::string log_tail(const std::filesystem::path& log, size_t bytes = 3000);

/// The command line as one shell-readable string, for messages.
std::string command_line(const std::vector<std::string>& argv);

/// Throws RuntimeToolError "<what>: <command> exited with status N; the last lines of <log>:\n<tail>" unless
/// `run` succeeded. (`run.start_errno` must be 0: a program that did not start is the caller's to report.)
void check_tool(const ToolRun& run, const std::vector<std::string>& argv, const std::filesystem::path& log,
                const std::string& what);

}  // namespace hawada
