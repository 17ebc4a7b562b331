// `hawada-pipeline inspect MODEL_DIR [--json]`: what a model directory holds.
#pragma once

#include <filesystem>
#include <string>

namespace hawada {

/// Architecture, counts, parameters, dtypes and files of a model directory, as text or JSON.
/// Throws CheckpointError for a malformed directory.
std::string inspect_model(const std::filesystem::path& dir, bool as_json);

}  // namespace hawada
