// Stage rounding_search: from the global gate scores to one legal, GPU-friendly shape within the
// budget (core/shape_search), and which heads and channels each layer keeps. Rank 0 computes and
// writes <run_dir>/plan/plan.json and <run_dir>/plan/candidates.csv (the Pareto front); the search
// is cheap and deterministic, so other ranks only wait.
#pragma once

#include "stages/stage.h"

namespace hawada {

/// The rounding_search stage.
class RoundingSearchStage final : public Stage {
 public:
  std::string_view name() const override { return "rounding_search"; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;
};

}  // namespace hawada
