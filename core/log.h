// Plain logging to stderr with the process label. Info goes out on rank 0 only (one line per
// event, not per rank); warnings and errors go out on every rank.
#pragma once

#include <string>
#include <string_view>

namespace hawada::log {

/// Rank 0 only.
void info(std::string_view message);
/// Every rank, prefixed with the rank.
void warn(std::string_view message);
/// Every rank, prefixed with the rank.
void error(std::string_view message);
/// "42s" or "3m05s", for ETAs.
std::string duration(double seconds);

}  // namespace hawada::log
