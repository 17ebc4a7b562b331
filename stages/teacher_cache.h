// Stage teacher_cache: runs the unpruned teacher over the data once and stores, per token, the
// top-k logits and the log-sum-exp over the full vocabulary (LMs) or the full logits (classifiers),
// in a cache directory shared across runs and keyed by a fingerprint of the teacher weights, the
// data, seq_len, k, dtypes and the format version. Each rank computes a contiguous range of chunks;
// rank 0 publishes index.json only after every rank finished. Reruns compute only missing chunks.
// With heal.data (and heal.steps > 0) the heal data set is cached too, in its own directory: the stage's
// fingerprint is then "<data fingerprint>+<heal data fingerprint>" (run_cache_dir / heal_cache_dir in
// training/student.h split it).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "core/data/data.h"
#include "core/data/teacher_cache.h"
#include "stages/layout.h"
#include "stages/stage.h"

namespace hawada {

/// The teacher_cache stage.
class TeacherCacheStage final : public Stage {
 public:
  std::string_view name() const override { return stage_names::teacher_cache; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;
  /// The cache directory of the run's data, from the last fingerprint() call.
  const std::filesystem::path& cache_dir() const { return targets_.at(0).dir; }

 private:
  struct Target {
    std::string what;  // "data" or "heal.data"
    DataSpec spec;
    CacheLayout layout;
    std::filesystem::path dir;
  };
  std::vector<Target> targets_;
  void cache_one(const StageContext& ctx, const std::string& what, const DataSpec& spec, const CacheLayout& layout,
                 const std::filesystem::path& dir);
};

/// XXH64 over every tensor of a model directory (name, dtype, shape, bytes), in name order.
uint64_t hash_model_weights(const std::filesystem::path& model_dir);

}  // namespace hawada
