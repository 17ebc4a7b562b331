// `make-model` and `make-data`: Hugging Face model directories with random weights and
// deterministic data, for the demo and for benchmarks at real shapes (no downloads needed).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace hawada {

/// Writes OUT_DIR (refused if it exists) with config.json, model.safetensors and, for LLaMA,
/// generation_config.json or, for ViT, preprocessor_config.json. Presets: "tiny",
/// "llama-3.2-1b", "vit-base-patch16-224". Weights ~ N(0, initializer_range), norms 1, biases 0;
/// deterministic for a seed. UsageError for an unknown arch or preset.
void make_model(const std::string& arch, const std::string& preset, int64_t seed, const std::filesystem::path& out_dir);

/// Writes OUT_FILE (HDF5, refused if it exists) for MODEL_DIR: "tokens" = input_ids int32
/// [samples, seq_len] uniform over the vocabulary; "images" = pixel_values uint8 [samples, 3, H, W]
/// (H, W from the model's image size) of smooth random patterns. Deterministic for a seed.
void make_data(const std::filesystem::path& model_dir, int64_t samples, int64_t seq_len, int64_t seed,
               const std::filesystem::path& out_file);

}  // namespace hawada
