#include "stages/host_memory.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/base/errors.h"
#include "core/base/process.h"
#include "core/dist/device.h"

namespace hawada {

std::string gib(int64_t bytes) { return fmt::format("{:.2f} GiB", static_cast<double>(bytes) / (1ull << 30)); }

void check_fits_host(const Config& c, const at::Device& device, std::string_view stage, int64_t need,
                     const std::string& what, const std::string& lower, int ranks) {
  if (!device.is_cpu()) return;
  const int64_t available = host_memory_available();
  if (available <= 0) return;
  const int ranks_here = std::max(1, ranks > 0 ? ranks : process_info().local_size);
  const int64_t per_rank = available / ranks_here;
  if (need <= per_rank) return;
  throw ConfigError(fmt::format(
      "{}: {} would need about {} more per rank ({}), but this host has {} available for its {} rank(s), {} each. "
      "Lower it with {}{}",
      c.source.string(), stage, gib(need), what, gib(available), ranks_here, gib(per_rank), lower,
      ranks > 0 ? "" : ", fewer ranks per node, or a GPU (run.device)"));
}

}  // namespace hawada
