// BERT's config.json, read without LibTorch (the fuzz target of the reader builds it alone).
#pragma once

#include "adapters/arch.h"

namespace hawada {

/// BertModel (a sentence encoder such as all-MiniLM-L6-v2): CheckpointError naming the file and key
/// when a field is missing, mistyped, out of bounds or unsupported (only absolute position embeddings,
/// an encoder, the GELU MLP).
ArchSummary summarize_bert_config(const nlohmann::json& config, const std::filesystem::path& file);

}  // namespace hawada
