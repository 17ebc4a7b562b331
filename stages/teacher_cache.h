// Stage teacher_cache: runs the unpruned teacher over the data once and stores, per token, the
// top-k logits and the log-sum-exp over the full vocabulary (LMs) or the full logits (classifiers),
// in a cache directory shared across runs and keyed by a fingerprint of the teacher weights, the
// data, seq_len, k, dtypes and the format version. Each rank computes a contiguous range of chunks;
// rank 0 publishes index.json only after every rank finished. Reruns compute only missing chunks.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "core/teacher_cache.h"
#include "stages/stage.h"

namespace hawada {

/// The teacher_cache stage.
class TeacherCacheStage final : public Stage {
 public:
  std::string_view name() const override { return "teacher_cache"; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;
  /// The cache directory of the last fingerprint() call.
  const std::filesystem::path& cache_dir() const { return dir_; }

 private:
  CacheLayout layout_;
  std::filesystem::path dir_;
};

/// XXH64 over every tensor of a model directory (name, dtype, shape, bytes), in name order.
uint64_t hash_model_weights(const std::filesystem::path& model_dir);

}  // namespace hawada
