#include "core/base/process.h"

#include <unistd.h>

namespace hawada {
namespace {

ProcessInfo make_default() {
  ProcessInfo p;
  char host[256] = {0};
  if (::gethostname(host, sizeof host - 1) == 0) p.host = host;
  return p;
}

ProcessInfo& storage() {
  static ProcessInfo info = make_default();
  return info;
}

}  // namespace

const ProcessInfo& process_info() { return storage(); }
void set_process_info(const ProcessInfo& info) { storage() = info; }
std::string process_label() {
  const auto& p = process_info();
  return "rank " + std::to_string(p.rank) + "/" + std::to_string(p.size) + " on host " + p.host;
}

}  // namespace hawada
