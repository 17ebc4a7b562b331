// Stage rounding_search: from the global gate scores to one legal, GPU-friendly shape within the
// budget (core/shape_search), and which heads and channels each layer keeps. Every rank runs the
// (deterministic) search; then, with search.probe_shapes > 1, the widest shapes of the best few
// head/hidden counts are each calibrated for search.probe_steps steps and measured (KL to the teacher
// on training samples), collectively, and the lowest KL wins: kept importance alone does not say
// whether fewer heads or a narrower FFN keeps the model better. Rank 0 writes
// <run_dir>/plan/plan.json (with the probes) and <run_dir>/plan/candidates.csv (the Pareto front).
#pragma once

#include <filesystem>

#include "stages/layout.h"
#include "stages/stage.h"

namespace hawada {

/// The rounding_search stage.
class RoundingSearchStage final : public Stage {
 public:
  std::string_view name() const override { return stage_names::rounding_search; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;

 private:
  std::filesystem::path cache_dir_;
};

}  // namespace hawada
