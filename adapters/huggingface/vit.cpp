#include "adapters/huggingface/vit.h"

#include <nlohmann/json.hpp>

#include "core/errors.h"

namespace hawada {

ArchSummary VitAdapter::summarize(const nlohmann::json& config, const std::filesystem::path& file) const {
  namespace cf = config_field;
  ArchSummary s;
  s.model_type = "vit";
  s.architecture = "ViTModel";
  if (auto a = config.find("architectures"); a != config.end() && a->is_array() && !a->empty() && (*a)[0].is_string())
    s.architecture = (*a)[0].get<std::string>();
  s.layers = cf::integer(config, "num_hidden_layers", file);
  s.hidden = cf::integer(config, "hidden_size", file);
  s.heads = cf::integer(config, "num_attention_heads", file);
  s.kv_heads = s.heads;
  s.ffn = cf::integer(config, "intermediate_size", file);
  const int64_t default_image = 224, default_patch = 16;
  s.image_size = cf::integer(config, "image_size", file, &default_image);
  s.patch_size = cf::integer(config, "patch_size", file, &default_patch);
  // ViT's attention head size is hidden_size / num_attention_heads (no head_dim key).
  if (s.hidden % s.heads != 0)
    throw CheckpointError("'" + file.string() + "': hidden_size " + std::to_string(s.hidden) +
                          " is not a multiple of num_attention_heads " + std::to_string(s.heads));
  s.head_dim = s.hidden / s.heads;
  if (s.architecture == "ViTForImageClassification") {
    // transformers derives num_labels from id2label; its default is 2.
    if (auto m = config.find("id2label"); m != config.end() && m->is_object())
      s.num_labels = static_cast<int64_t>(m->size());
    else {
      const int64_t two = 2;
      s.num_labels = cf::integer(config, "num_labels", file, &two);
    }
  }
  return s;
}

}  // namespace hawada
