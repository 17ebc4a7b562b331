// Stage evaluate: how good the export is, and how fast. On held-out samples (the run's last
// train.holdout samples, or evaluate.data: another file of the same format, e.g. a different document
// set), teacher and export run side by side in fp32 on the rank-0 device:
//   LMs:          NLL and perplexity of each on the samples' own next tokens, KL(teacher || export) over
//                 the full vocabulary and top-1 agreement with the teacher, per token;
//   classifiers:  top-1 agreement and KL over the labels.
// When heal ran, the unhealed student (the calibrated slice) is measured too. Then the forward latency
// of dense and export in the run's compute dtype on that device at budget.latency_batch x data.seq_len
// (median of evaluate.latency_repeats after a warm-up): the measured speedup beside the predicted one.
// Results go into <run_dir>/export/summary.json ("evaluate") and <run_dir>/evaluate/evaluate.json, and a
// model card README.md (Hub front matter) is written into the export directory.
//
// `hawada-pipeline evaluate TEACHER_DIR STUDENT_DIR --data FILE ...` runs the same measurement on any
// two Hugging Face directories.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "adapters/model.h"
#include "core/data/data.h"
#include "core/format/model_shape.h"
#include "stages/layout.h"
#include "stages/stage.h"

namespace hawada {

/// Quality of `student` against `teacher` on samples [first, first + count) of `data` (fp32 models
/// expected). LM keys: tokens, teacher_nll, student_nll, teacher_ppl, student_ppl, kl, top1_agreement;
/// classifier keys: samples, kl, top1_agreement; encoder (hidden states) keys: samples, tokens, cosine
/// (mean over samples of the cosine similarity of mean-pooled embeddings, teacher against student, in
/// the teacher's coordinates: a student whose hidden channels were pruned has zeros there), min_cosine,
/// cosine_kept_channels (the same on the channels the student kept), similarity_correlation (Pearson
/// correlation of the pairwise cosine similarities between the samples' embeddings, teacher against
/// student: what retrieval sees, whatever the widths), token_cosine (mean over real tokens),
/// relative_mse (|s - t|^2 / |t|^2 per token). `output` is what the models put out (their adapter's
/// traits); `student_channels` the teacher channel of each student channel when the student is narrower
/// (plan.hidden). Runs on rank 0 only (not collective).
nlohmann::json evaluate_quality(const Model& teacher, const Model& student, const DataSource& data, int64_t first,
                                int64_t count, const at::Device& device, ModelOutput output,
                                const std::vector<int64_t>& student_channels = {});
/// The keys of evaluate_quality's result that must be finite for a published export.
std::vector<std::string> required_quality_keys(ModelOutput output);

/// Median forward seconds of `model` on random inputs shaped like `example` (after one warm-up).
double measure_latency(const Model& model, const Batch& example, int repeats, const at::Device& device);

/// The evaluate stage.
class EvaluateStage final : public Stage {
 public:
  std::string_view name() const override { return stage_names::evaluate; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;
};

}  // namespace hawada
