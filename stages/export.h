// Stage export: the pruned Hugging Face model directory <run_dir>/export/<export.name>/.
//
// Gate values of the kept heads and FFN channels are folded into the output-side weights; every
// tensor is sliced to the plan by the adapter (core/slicing); config.json gets the new counts
// written explicitly, plus `dtype` and `torch_dtype`. Shards of export.max_shard_size are written
// in parallel (rank r writes shards r, r + W, ...) into a temporary directory; rank 0 writes the
// index and config.json, copies the tokenizer/preprocessor/generation files, and publishes the
// directory by rename. Then rank 0 verifies on the held-out samples that our forward of the export
// equals the hard-gated student and writes <run_dir>/export/summary.json. With export.gguf, rank 0 then has
// llama.cpp's own tools (runtimes/llama_cpp.h) write <run_dir>/export/<name>-gguf/<name>-<type>.gguf, published
// by rename and listed in summary.json ("gguf": type, file, bytes); their output is in <name>-gguf.logs/.
#pragma once

#include "stages/layout.h"
#include "stages/stage.h"

namespace hawada {

/// The export stage.
class ExportStage final : public Stage {
 public:
  std::string_view name() const override { return stage_names::export_; }
  std::string fingerprint(const StageContext& context) override;
  void run(const StageContext& context) override;
};

}  // namespace hawada
