// The LLaMA family's weights as role tables (adapters/roles.h), one per model_type: llama, mistral, qwen2 and
// qwen3 share LLaMA's; gemma3_text, phi3 and gpt_neox have their own. Roles are addressed by index: the enums
// below name them in table order (a family's own roles follow kMlpNorm).
#pragma once

#include <string_view>

#include "adapters/roles.h"

namespace hawada::llama_family {

// A table, one role per line (clang-format would put each field on its own).
// clang-format off
enum Role {
  kEmbed, kFinalNorm, kLmHead, kAttnNorm, kMlpNorm,
  kQW, kQB, kKW, kKB, kVW, kVB, kOW, kOB, kGateW, kGateB, kUpW, kUpB, kDownW, kDownB,  // weight, bias per projection
  kQNorm, kKNorm, kInvFreq,
  kPostAttnNorm, kPostMlpNorm,  // gemma3_text only: norms of the attention and MLP outputs
};
enum FusedRole { kQkvW = kMlpNorm + 1, kFusedOW, kGateUpW, kFusedDownW };
enum NeoxRole {
  kFinalNormB = kMlpNorm + 1, kAttnNormB, kMlpNormB, kNeoxQkvW, kNeoxQkvB, kNeoxOW, kNeoxOB, kNeoxUpW, kNeoxUpB,
  kNeoxDownW, kNeoxDownB, kLmHeadAlias,
};
// clang-format on

/// The role table of a LLaMA-family model_type.
const RoleTable& roles(std::string_view model_type);

}  // namespace hawada::llama_family
