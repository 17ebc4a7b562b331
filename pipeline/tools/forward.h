// `hawada-pipeline forward` and `export --keep-all`: the models as standalone tools.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace hawada {

/// Runs the model in `model_dir` on the tensors of `inputs` (input_ids [+ attention_mask], or
/// pixel_values) and writes its outputs ("logits", or a bare ViTModel's hidden states) to `output`.
/// dtype is "fp32" or "bf16"; threads 0 keeps LibTorch's default.
void forward_command(const std::filesystem::path& model_dir, const std::filesystem::path& inputs,
                     const std::filesystem::path& output, const std::string& dtype, int threads);

/// Keep-all export of `model_dir` into `out_dir` (byte-identical tensors, published atomically).
void export_keep_all_command(const std::filesystem::path& model_dir, const std::filesystem::path& out_dir,
                             std::optional<uint64_t> max_shard_bytes);

/// `hawada-pipeline evaluate`: stages/evaluate's quality measurement of `student_dir` against
/// `teacher_dir` on samples [first, first + samples) of a data file (0 samples = all), in fp32.
struct EvaluateOptions {
  std::filesystem::path data;
  std::string format = "tokens_h5";  ///< tokens_h5, tokens_bin or images_h5
  int64_t seq_len = 0;               ///< tokens_bin: required; tokens_h5: the file's
  int64_t samples = 0, first = 0;
  std::string device = "auto";
};
/// The metrics as text (or JSON).
std::string evaluate_command(const std::filesystem::path& teacher_dir, const std::filesystem::path& student_dir,
                             const EvaluateOptions& options, bool json);

}  // namespace hawada
