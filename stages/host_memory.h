// Before a stage allocates its largest state on a CPU run: whether it fits the host memory left to this node's
// ranks, so that a stage that cannot fit says so (what it would need, which keys lower it) instead of being
// OOM-killed mid-stage (issue 37, drill 6).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <ATen/Device.h>

#include "training/settings.h"

namespace hawada {

/// Throws ConfigError "<config>: <stage> would need about <need> more per rank (<what>), but this host has <available>
/// for its <n> rank(s), <each> each. Lower it with <lower>[, fewer ranks per node, or a GPU]" when `need` bytes exceed
/// host_memory_available() divided by `ranks` (0: this node's ranks; 1 for a stage that runs on one rank while the
/// others wait). Nothing on a GPU run (its large state lives on the device) or where nothing can be read.
void check_fits_host(const Config& c, const at::Device& device, std::string_view stage, int64_t need,
                     const std::string& what, const std::string& lower, int ranks = 0);

/// "1.23 GiB".
std::string gib(int64_t bytes);

}  // namespace hawada
