// ViT's config.json, read without LibTorch (the fuzz target of the reader builds it alone).
#include <nlohmann/json.hpp>

#include "adapters/arch.h"
#include "core/base/errors.h"

namespace hawada {
namespace {

namespace cf = config_field;

constexpr int64_t kMaxLayers = 1024, kMaxHidden = int64_t{1} << 17, kMaxHeads = 4096, kMaxImage = 16384;

}  // namespace

ArchSummary summarize_vit_config(const nlohmann::json& config, const std::filesystem::path& file) {
  ArchSummary s;
  s.model_type = "vit";
  s.architecture = cf::architecture(config, "ViTModel");
  s.layers = cf::integer(config, "num_hidden_layers", file, nullptr, false, kMaxLayers);
  s.hidden = cf::integer(config, "hidden_size", file, nullptr, false, kMaxHidden);
  s.heads = cf::integer(config, "num_attention_heads", file, nullptr, false, kMaxHeads);
  s.kv_heads = s.heads;
  s.ffn = cf::integer(config, "intermediate_size", file);
  const int64_t default_image = 224, default_patch = 16;
  s.image_size = cf::integer(config, "image_size", file, &default_image, false, kMaxImage);
  s.patch_size = cf::integer(config, "patch_size", file, &default_patch, false, s.image_size);
  // ViT's attention head size is hidden_size / num_attention_heads (no head_dim key).
  if (s.hidden % s.heads != 0)
    throw CheckpointError("'" + file.string() + "': hidden_size " + std::to_string(s.hidden) +
                          " is not a multiple of num_attention_heads " + std::to_string(s.heads));
  s.head_dim = s.hidden / s.heads;
  s.qkv_bias = cf::boolean(config, "qkv_bias", file, true);
  s.out_bias = s.mlp_bias = true;  // ViTSelfOutput, ViTIntermediate, ViTOutput always have biases
  const int64_t rgb = 3;
  s.channels = cf::integer(config, "num_channels", file, &rgb, false, 64);
  const int64_t grid = s.image_size / s.patch_size;
  s.positions = grid * grid + 1;  // the patches and the CLS token
  s.pooled = cf::integer(config, "pooler_output_size", file, &s.hidden, false, kMaxHidden);
  if (s.architecture == "ViTForImageClassification") {
    // transformers derives num_labels from id2label; its default is 2.
    if (auto m = config.find("id2label"); m != config.end() && m->is_object()) {
      s.num_labels = static_cast<int64_t>(m->size());
    } else {
      const int64_t two = 2;
      s.num_labels = cf::integer(config, "num_labels", file, &two);
    }
  }
  return s;
}

}  // namespace hawada
