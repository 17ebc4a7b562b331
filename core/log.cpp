#include "core/log.h"

#include <cmath>
#include <cstdio>

#include <chrono>
#include <cstdio>
#include <string>

#include "core/process.h"

namespace hawada::log {
namespace {

// Taken when the program starts, so log times count from launch.
const auto g_start = std::chrono::steady_clock::now();

double seconds_since_start() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
}

void emit(const char* level, std::string_view message) {
  const auto& p = process_info();
  std::string prefix = p.size > 1 ? "[hawada r" + std::to_string(p.rank) + " " : "[hawada ";
  std::fprintf(stderr, "%s%8.2fs] %s%.*s\n", prefix.c_str(), seconds_since_start(), level,
               static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
}

}  // namespace

void info(std::string_view message) {
  if (process_info().rank == 0) emit("", message);
}
void warn(std::string_view message) { emit("warning: ", message); }
void error(std::string_view message) { emit("error: ", message); }

std::string duration(double s) {
  char buf[32];
  if (!(s < 1e9)) return "?";
  if (s < 120) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else std::snprintf(buf, sizeof buf, "%.0fm%02.0fs", std::floor(s / 60), std::fmod(s, 60));
  return buf;
}

}  // namespace hawada::log
