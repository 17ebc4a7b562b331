// The one clock stages and training loops time themselves with (steady: never jumps with the wall clock).
#pragma once

#include <chrono>

namespace hawada {

using Clock = std::chrono::steady_clock;

/// Seconds from `t` to now.
inline double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace hawada
