#include "runtimes/tool.h"

#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include <fmt/format.h>

extern char** environ;

namespace hawada {
namespace fs = std::filesystem;

namespace {
// While alive: the calling thread may run on every online CPU (those the cgroup allows: the kernel intersects);
// its own mask comes back at the end of the scope. Best effort: a mask that cannot be read or set is left alone.
class AllCpus {
 public:
  AllCpus() {
    if (sched_getaffinity(0, sizeof saved_, &saved_) != 0) return;
    cpu_set_t all;
    CPU_ZERO(&all);
    const long n = sysconf(_SC_NPROCESSORS_CONF);
    for (long c = 0; c < n && c < CPU_SETSIZE; ++c) CPU_SET(static_cast<int>(c), &all);
    changed_ = sched_setaffinity(0, sizeof all, &all) == 0;
  }
  ~AllCpus() {
    if (changed_) sched_setaffinity(0, sizeof saved_, &saved_);
  }
  AllCpus(const AllCpus&) = delete;
  AllCpus& operator=(const AllCpus&) = delete;

 private:
  cpu_set_t saved_{};
  bool changed_ = false;
};

int open_output(const fs::path& file, const char* what) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError(fmt::format("cannot open {} '{}': {}", what, file.string(), std::strerror(errno)));
  return fd;
}
}  // namespace

ToolRun run_tool(const std::vector<std::string>& argv, const fs::path& log, const fs::path& stdout_file) {
  HAWADA_ASSERT(!argv.empty(), "run_tool: an empty command");
  const int fd = open_output(log, "tool log");
  int out_fd = fd;
  if (!stdout_file.empty()) {
    try {
      out_fd = open_output(stdout_file, "tool output");
    } catch (...) {
      ::close(fd);
      throw;
    }
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fd, STDERR_FILENO);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  // posix_spawnp (glibc: clone with CLONE_VFORK, no copy of this process's pages) is safe in an MPI process
  // holding gigabytes, where fork() is not; glibc reports a failed exec as the call's error.
  pid_t pid = -1;
  ToolRun run;
  {
    // mpirun binds each rank to its core(s); a child inherits the spawning thread's mask, so a runtime measured
    // with N threads would share the rank's one core. The tool gets every CPU this process may use.
    const AllCpus all_cpus;
    run.start_errno = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  }
  posix_spawn_file_actions_destroy(&actions);
  ::close(fd);
  if (out_fd != fd) ::close(out_fd);
  if (run.start_errno != 0) return run;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw IoError(fmt::format("waitpid for '{}': {}", argv[0], std::strerror(errno)));
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return run;
}

namespace {
bool executable(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}
}  // namespace

fs::path find_program(const fs::path& dir, const std::string& name) {
  for (const fs::path& p : {dir / "build" / "bin" / name, dir / name})
    if (!dir.empty() && executable(p)) return p;
  const char* path = std::getenv("PATH");
  std::string rest = path ? path : "";
  while (!rest.empty()) {
    const size_t colon = rest.find(':');
    const fs::path d = rest.substr(0, colon);
    rest = colon == std::string::npos ? "" : rest.substr(colon + 1);
    if (!d.empty() && executable(d / name)) return d / name;
  }
  return {};
}

std::string log_tail(const fs::path& log, size_t bytes) {
  std::ifstream in(log, std::ios::binary | std::ios::ate);
  if (!in) return "";
  const auto size = static_cast<size_t>(in.tellg());
  const size_t from = size > bytes ? size - bytes : 0;
  in.seekg(static_cast<std::streamoff>(from));
  std::string text(size - from, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (from > 0) {
    const size_t line = text.find('\n');
    if (line != std::string::npos && line + 1 < text.size()) text.erase(0, line + 1);
  }
  return text;
}

std::string command_line(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    const bool plain = !a.empty() && a.find_first_of(" \t\n'\"\\$`") == std::string::npos;
    out += (out.empty() ? "" : " ") + (plain ? a : "'" + a + "'");
  }
  return out;
}

void check_tool(const ToolRun& run, const std::vector<std::string>& argv, const fs::path& log,
                const std::string& what) {
  HAWADA_ASSERT(run.start_errno == 0, "check_tool: the caller reports a tool that did not start");
  if (run.exit_code == 0) return;
  throw RuntimeToolError(fmt::format("{}: {} exited with status {}; the last lines of {}:\n{}", what,
                                     command_line(argv), run.exit_code, log.string(), log_tail(log)));
}

}  // namespace hawada
