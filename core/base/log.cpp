#include "core/base/log.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <string>

#include <fmt/format.h>

#include "core/base/process.h"

namespace hawada::log {
namespace {

// Taken when the program starts, so log times count from launch.
const auto g_start = std::chrono::steady_clock::now();

double seconds_since_start() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
}

// This rank's log file (every message of this rank, info included), once open_rank_file was called.
std::FILE* g_file = nullptr;
std::mutex g_mutex;

void emit(const char* level, std::string_view message, bool to_stderr) {
  const auto& p = process_info();
  std::string prefix = p.size > 1 ? "[hawada r" + std::to_string(p.rank) + " " : "[hawada ";
  const double t = seconds_since_start();
  std::lock_guard<std::mutex> lock(g_mutex);
  if (to_stderr) {
    std::fprintf(stderr, "%s%8.2fs] %s%.*s\n", prefix.c_str(), t, level, static_cast<int>(message.size()),
                 message.data());
    std::fflush(stderr);
  }
  if (g_file) {
    std::fprintf(g_file, "%s%8.2fs] %s%.*s\n", prefix.c_str(), t, level, static_cast<int>(message.size()),
                 message.data());
    std::fflush(g_file);
  }
}

}  // namespace

void open_rank_file(const std::filesystem::path& path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_file) std::fclose(g_file);
  g_file = std::fopen(path.c_str(), "a");
}

void info(std::string_view message) { emit("", message, process_info().rank == 0); }
void warn(std::string_view message) { emit("warning: ", message, true); }
void error(std::string_view message) { emit("error: ", message, true); }

std::string duration(double s) {
  if (!(s < 1e9)) return "?";
  if (s < 120) return fmt::format("{:.0f}s", s);
  return fmt::format("{:.0f}m{:02.0f}s", std::floor(s / 60), std::fmod(s, 60));
}

}  // namespace hawada::log
