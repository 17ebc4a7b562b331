// runtimes/tool.h: a runtime's tool started by a rank that mpirun bound to one core still gets every CPU.
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "runtimes/tool.h"

namespace hawada {
namespace {

int allowed_cpus_of_child(const std::filesystem::path& dir) {
  const auto log = dir / "cpus.log";
  const ToolRun run = run_tool({"sh", "-c", "grep Cpus_allowed_list /proc/self/status"}, log);
  EXPECT_TRUE(run.ok());
  std::ifstream in(log);
  std::string key, list;
  in >> key >> list;  // "Cpus_allowed_list:" "0-1"
  int count = 0;
  for (size_t at = 0; at < list.size();) {
    const size_t comma = list.find(',', at);
    const std::string part = list.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    const size_t dash = part.find('-');
    count += dash == std::string::npos ? 1 : std::stoi(part.substr(dash + 1)) - std::stoi(part.substr(0, dash)) + 1;
    at = comma == std::string::npos ? list.size() : comma + 1;
  }
  return count;
}

TEST(RunTool, AToolGetsEveryCpuWhenTheCallerIsBoundToOne) {
  cpu_set_t mine;
  ASSERT_EQ(sched_getaffinity(0, sizeof mine, &mine), 0);
  const int available = CPU_COUNT(&mine);
  if (available < 2) GTEST_SKIP() << "one CPU: nothing to widen";
  const auto dir = std::filesystem::temp_directory_path() / ("hawada-tool-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &mine)) {
      CPU_SET(c, &one);
      break;
    }
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);  // as mpirun's --bind-to core leaves a rank
  const int child = allowed_cpus_of_child(dir);
  cpu_set_t after;
  ASSERT_EQ(sched_getaffinity(0, sizeof after, &after), 0);
  sched_setaffinity(0, sizeof mine, &mine);
  std::filesystem::remove_all(dir);
  EXPECT_GE(child, available);
  EXPECT_EQ(CPU_COUNT(&after), 1) << "the caller's own binding comes back";
}

}  // namespace
}  // namespace hawada
