// Plain logging to stderr with the process label. Info goes out on rank 0 only (one line per
// event, not per rank); warnings and errors go out on every rank. Each rank may also keep a file.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace hawada::log {

/// From now on every message of this rank (info included, on every rank) is also appended to
/// `path` (one log file per rank in the run directory).
void open_rank_file(const std::filesystem::path& path);
/// On stderr from rank 0 only; in every rank's own file.
void info(std::string_view message);
/// Every rank, prefixed with the rank.
void warn(std::string_view message);
/// Every rank, prefixed with the rank.
void error(std::string_view message);
/// "42s" or "3m05s", for ETAs.
std::string duration(double seconds);

}  // namespace hawada::log
