// The run configuration: one TOML file, parsed and validated into typed structs with defaults.
//
// Sections and keys (see DESIGN.md, "Configuration, in outline"):
//   [run] [model] [data] [teacher] [gates] [train] [budget] [search] [export] [dist]
// Every key has a default except model.path and data.path. Relative paths resolve against the directory
// of the config file and are stored absolute and lexically normalised. Any mistake (syntax, type, range,
// unknown key, missing path) throws ConfigError "<file>:<line>:<column>: <dotted.key>: <what> (expected
// ..., got ...)". This header deliberately does not include toml++.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>

#include "training/settings.h"

namespace hawada {

/// Reads, parses and validates a config file. Throws ConfigError (file:line:column, dotted key, expected
/// vs got), also when the file cannot be opened.
Config load_config(const std::filesystem::path& file);

/// Same as load_config, from text: `source` names the file in messages and anchors relative paths (its
/// parent directory; the current directory when it has none) and the default run.dir (its stem).
Config parse_config(std::string_view text, const std::filesystem::path& source);

/// The resolved config as TOML text: every section and key in declaration order, defaults filled, paths
/// absolute, max_shard_size in bytes. parse_config(to_toml(c), c.source) == c for any parsed c.
std::string to_toml(const Config& config);
/// Each [section] of to_toml's text (its header line and keys), by name: what a stage fingerprint hashes whole
/// (StageContext::sections), so a key added to a section counts without anyone listing it.
std::map<std::string, std::string> config_sections(const Config& config);

/// TOML spelling of each enum value, for messages and printing.
std::string_view to_string(ComputeDtype value);
std::string_view to_string(HeadMatmul value);
std::string_view to_string(DataFormat value);
std::string_view to_string(TokenDtype value);
std::string_view to_string(StoreDtype value);
std::string_view to_string(TeacherLogits value);
std::string_view to_string(BudgetMetric value);
std::string_view to_string(LatencyMode value);
std::string_view to_string(BudgetRuntime value);
std::string_view to_string(ExportDtype value);
std::string_view to_string(RefitOrder value);
std::string_view to_string(HealKeep value);
std::string_view to_string(DistBackend value);
std::string_view to_string(DeviceRequest value);
std::string_view to_string(GgufType value);
std::string_view to_string(EvalRuntime value);

}  // namespace hawada
