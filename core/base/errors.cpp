#include "core/base/errors.h"

#include <cstdio>
#include <cstdlib>

namespace hawada::detail {

void assert_fail(const char* expr, const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "hawada-pipeline: internal error at %s:%d: assertion '%s' failed: %s\n", file, line, expr,
               msg.c_str());
  std::fflush(stderr);
  std::abort();
}

std::string where(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

}  // namespace hawada::detail
