// The model card of an export: README.md with Hugging Face Hub front matter (base_model,
// library_name, tags), then how the model was made, its shape before and after, the measured quality
// and speed, and the exact command, so the directory can be uploaded to the Hub as it is.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "training/settings.h"

namespace hawada {

struct LoadedModel;

/// README.md text for the export of a run; `summary` is export/summary.json with its "evaluate" key.
std::string model_card(const Config& config, const LoadedModel& dense, const nlohmann::json& summary,
                       const std::filesystem::path& run_dir);

}  // namespace hawada
