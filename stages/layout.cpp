#include "stages/layout.h"

#include <nlohmann/json.hpp>

#include "core/io/checkpoint.h"

namespace hawada {

Plan read_plan(const std::filesystem::path& run_dir, const ModelShape& dense) {
  const std::filesystem::path file = RunLayout(run_dir).plan();
  return plan_from_json(read_json_file(file), dense, file.string());
}

}  // namespace hawada
