#include "core/base/fault.h"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <string>
#include <thread>

#include "core/base/errors.h"
#include "core/base/log.h"
#include "core/base/process.h"

namespace hawada {

namespace {

// The action HAWADA_FAULT asks of this point on this rank; empty when none.
std::string requested_action(std::string_view point) {
  const char* env = std::getenv("HAWADA_FAULT");
  if (!env || !*env) return {};
  std::string_view specs(env);
  while (!specs.empty()) {
    size_t comma = specs.find(',');
    std::string_view spec = specs.substr(0, comma);
    specs = comma == std::string_view::npos ? std::string_view() : specs.substr(comma + 1);
    size_t at = spec.find('@');
    if (at == std::string_view::npos || spec.substr(0, at) != point) continue;
    std::string_view rest = spec.substr(at + 1);
    size_t colon = rest.find(':');
    std::string_view action = colon == std::string_view::npos ? "throw" : rest.substr(colon + 1);
    if (std::atoi(std::string(rest.substr(0, colon)).c_str()) != process_info().rank) continue;
    return std::string(action);
  }
  return {};
}

}  // namespace

void fault_point(std::string_view point) {
  const std::string action = requested_action(point);
  if (action.empty() || action == "flag") return;
  log::warn("fault injected at '" + std::string(point) + "' (" + action + ")");
  if (action == "kill") std::raise(SIGKILL);
  if (action == "stop") {  // a hung rank: stopped until SIGCONT (or killed), as `kill -STOP` leaves it
    std::raise(SIGSTOP);
    return;
  }
  if (action == "pause") {  // a slow rank or filesystem: this point takes 5 s, then the run goes on
    std::this_thread::sleep_for(std::chrono::seconds(5));
    return;
  }
  if (action == "term") {
    std::raise(SIGTERM);
    return;
  }
  throw IoError("fault injected at '" + std::string(point) + "' on " + process_label());
}

bool fault_flag(std::string_view point) {
  if (requested_action(point) != "flag") return false;
  log::warn("fault injected at '" + std::string(point) + "' (flag)");
  return true;
}

}  // namespace hawada
