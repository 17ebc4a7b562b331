// The teacher-logit cache on disk (DESIGN.md "Teacher cache"), shared across runs:
//
//   <cache_root>/<fingerprint>/chunk-<start>-<end>.h5   one HDF5 file per slice of samples
//   <cache_root>/<fingerprint>/index.json              written last, by rank 0, once every chunk exists
//
// LM chunks hold topk_values [n, L, k] (fp16, or bf16 stored as its uint16 bits), topk_indices int32
// [n, L, k] sorted by descending value, logsumexp fp32 [n, L] over the full vocabulary, and
// sample_index int64 [n]; sampled LM chunks (CacheForm::sampled, core/prune/distill_loss.h SampledLogits)
// hold sampled_ids [n, L, D, 3] (uint8: each token id in 3 little-endian bytes), sampled_counts uint8
// [n, L, D] and entropy fp32 [n, L], 4 D + 4 bytes a token, and row_xxh64 [n]: each sample's XXH64 of
// those bytes, checked for every row read; classifier chunks hold logits fp32 [n, labels]; hidden-state chunks
// (encoders without a head) hold hidden_states [n, L, hidden] (fp16, or bf16 as uint16 bits). Every chunk carries the
// fingerprint and format version as attributes. Chunks are fixed global sample ranges, so a cache
// written by W ranks is read by any W', and a killed run resumes by computing only missing chunks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/format/model_shape.h"

namespace hawada {

/// Bumped whenever the layout or the meaning of a cache file changes.
inline constexpr int64_t kTeacherCacheFormat = 1;
/// Samples per chunk file: the unit of crash recovery.
inline constexpr int64_t kCacheChunkSamples = 64;

/// What a teacher cache keeps of the model's output: an LM's top-k logits with the log-sum-exp, or tokens
/// sampled from its distribution (chosen by the teacher_cache stage from `teacher.logits`); an encoder's
/// last hidden states; a classifier's full logits.
enum class CacheForm { top_k, sampled, hidden, classifier };
/// How the 16-bit values of a top-k or hidden-state cache are stored; `none` for the forms without them.
enum class CacheDtype { none, fp16, bf16 };

/// The form's name in index.json and in the cache fingerprint: "lm", "lm-sampled", "hidden" or "classifier".
std::string_view to_string(CacheForm form);
/// The dtype's name in index.json and in the cache fingerprint: "fp16", "bf16", or "" for `none`.
std::string_view to_string(CacheDtype dtype);
/// The form named `name` (as to_string writes it); nullopt for a name this build does not know.
std::optional<CacheForm> cache_form_from_string(std::string_view name);
/// The dtype named `name` (as to_string writes it); nullopt for a name this build does not know.
std::optional<CacheDtype> cache_dtype_from_string(std::string_view name);
/// The in-memory type of stored 16-bit values: fp16 as half, otherwise bf16.
inline at::ScalarType scalar_type(CacheDtype dtype) { return dtype == CacheDtype::fp16 ? at::kHalf : at::kBFloat16; }

/// The cache form of a model output (an LM's top-k; the stage picks `sampled` from the config).
inline CacheForm cache_form(ModelOutput output) {
  switch (output) {
    case ModelOutput::token_logits:
      return CacheForm::top_k;
    case ModelOutput::sample_logits:
      return CacheForm::classifier;
    case ModelOutput::hidden_states:
      return CacheForm::hidden;
  }
  return CacheForm::top_k;
}

/// What a cache holds, fixed by its fingerprint.
struct CacheLayout {
  std::string fingerprint;  ///< 16 hex digits
  CacheForm form = CacheForm::top_k;
  int64_t samples = 0;
  int64_t seq_len = 0;      ///< lm, hidden
  int64_t top_k = 0;        ///< lm
  int64_t draws = 0;        ///< lm-sampled: tokens drawn per position (the slots D)
  int64_t vocab_size = 0;   ///< lm
  int64_t num_labels = 0;   ///< classifier
  int64_t hidden_size = 0;  ///< hidden
  /// lm, hidden: fp16 or bf16 (none for the others)
  CacheDtype store_dtype = CacheDtype::none;
  /// Global chunk ranges [start, end), covering [0, samples).
  std::vector<std::pair<int64_t, int64_t>> chunks() const;
  /// "chunk-0000000064-0000000128.h5"
  static std::string chunk_name(int64_t start, int64_t end);
};

/// One chunk's values, in memory.
struct CacheChunk {
  at::Tensor topk_values;     ///< lm: [n, L, k], fp16 or bf16
  at::Tensor topk_indices;    ///< lm: int32 [n, L, k]
  at::Tensor logsumexp;       ///< lm: fp32 [n, L]
  at::Tensor sampled_ids;     ///< lm-sampled: int32 [n, L, D] (0 in empty slots)
  at::Tensor sampled_counts;  ///< lm-sampled: uint8 [n, L, D] (each position's sum to D)
  at::Tensor entropy;         ///< lm-sampled: fp32 [n, L], nats
  at::Tensor logits;          ///< classifier: fp32 [n, labels]
  at::Tensor hidden_states;   ///< hidden: [n, L, hidden], fp16 or bf16
  /// Not stored: set for a student narrower than the teacher (hidden channels pruned), int64 [hidden']:
  /// the teacher channel each of the student's channels is. Its hidden states are compared in the
  /// teacher's coordinates, the dropped channels as zeros.
  at::Tensor hidden_channels;
  at::Tensor sample_index;  ///< int64 [n]
};

/// Writes a chunk atomically (temporary name, fsync, rename); stale temporaries of it are removed.
void write_cache_chunk(const std::filesystem::path& dir, const CacheLayout& layout, int64_t start, int64_t end,
                       const CacheChunk& chunk);
/// True when the chunk file exists and matches the layout; CacheError when it exists but does not
/// (wrong fingerprint, format, shapes): a cache is never silently mixed.
bool cache_chunk_ready(const std::filesystem::path& dir, const CacheLayout& layout, int64_t start, int64_t end);
/// Reads a chunk back, checking it against the layout (CacheError naming the file otherwise).
CacheChunk read_cache_chunk(const std::filesystem::path& dir, const CacheLayout& layout, int64_t start, int64_t end);

/// Reads the rows of the given global samples, in that order, from whichever chunks hold them (the
/// random access of training); checks each chunk touched against the layout.
CacheChunk read_cache_samples(const std::filesystem::path& dir, const CacheLayout& layout,
                              const std::vector<int64_t>& samples);

/// Writes index.json atomically (after checking every chunk is ready).
void write_cache_index(const std::filesystem::path& dir, const CacheLayout& layout);
/// True when index.json exists and matches `layout` and every chunk is there; false when a chunk is
/// missing (computed again); CacheError when the directory holds an index for another layout or a
/// chunk that does not match. (Contents are checked where rows are read: read_cache_chunk, read_cache_samples.)
bool cache_complete(const std::filesystem::path& dir, const CacheLayout& layout);
/// Reads the layout from an existing index.json (for readers that do not know it); CacheError otherwise.
CacheLayout read_cache_index(const std::filesystem::path& dir);

}  // namespace hawada
