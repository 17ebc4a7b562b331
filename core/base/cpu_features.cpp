#include "core/base/cpu_features.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace hawada {

bool cpu_has_native_bf16_matmul() {
  static const bool native = [] {
    if (const char* env = std::getenv("HAWADA_NATIVE_BF16"); env && *env) return std::string(env) != "0";
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
      if (line.rfind("flags", 0) != 0) continue;
      std::istringstream words(line);
      std::string w;
      while (words >> w)
        if (w == "avx512_bf16" || w == "amx_bf16") return true;
      return false;
    }
    return false;
  }();
  return native;
}

}  // namespace hawada
