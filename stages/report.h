// Stage report: <run_dir>/report/index.html, one self-contained page (inline SVG, no scripts, no
// network) from the run's outputs: loss, KL and expected-cost curves (train/metrics.jsonl), a
// per-layer heat map of the kept heads and FFN channels (plan/plan.json), the Pareto front of
// predicted latency against kept importance with the chosen point (plan/candidates.csv), a
// before/after table (parameters, FLOPs, predicted latency) and the export's verify result
// (export/summary.json). Rank 0 writes it atomically.
#pragma once

#include <filesystem>
#include <string>

#include "stages/layout.h"
#include "stages/stage.h"

namespace hawada {

/// The report stage.
class ReportStage final : public Stage {
 public:
  std::string_view name() const override { return stage_names::report; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;
};

/// The report page of a run directory (what the stage writes), as HTML.
std::string render_report(const std::filesystem::path& run_dir, const std::string& title);

}  // namespace hawada
