#include "core/fault.h"

#include <csignal>
#include <cstdlib>
#include <string>

#include "core/errors.h"
#include "core/log.h"
#include "core/process.h"

namespace hawada {

void fault_point(std::string_view point) {
  const char* env = std::getenv("HAWADA_FAULT");
  if (!env || !*env) return;
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
    log::warn("fault injected at '" + std::string(point) + "' (" + std::string(action) + ")");
    if (action == "kill") std::raise(SIGKILL);
    throw IoError("fault injected at '" + std::string(point) + "' on " + process_label());
  }
}

}  // namespace hawada
