#include "stages/layout.h"

#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/hash.h"
#include "core/io/checkpoint.h"

namespace hawada {

std::string plan_checksum(const Plan& plan) {
  Hasher h;
  h.update(plan_to_json(plan).dump());
  return hex64(h.digest());
}

Plan read_plan(const std::filesystem::path& run_dir, const ModelShape& dense) {
  const std::filesystem::path file = RunLayout(run_dir).plan();
  const nlohmann::json j = read_json_file(file);
  Plan plan = plan_from_json(j, dense, file.string());
  if (j.contains("xxh64") && j["xxh64"] != plan_checksum(plan))
    throw CheckpointError("'" + file.string() +
                          "': the plan does not match the checksum written with it (a flipped "
                          "bit, a torn write or a hand edit; to use an edited plan on purpose, delete its \"xxh64\" "
                          "key)");
  return plan;
}

}  // namespace hawada
