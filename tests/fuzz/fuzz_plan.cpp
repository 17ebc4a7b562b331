// libFuzzer target: the plan.json reader (a file a user can edit between rounding_search and export).
// Any input must give a plan that export can slice safely (every index in range and distinct, the
// shape loadable by transformers) or throw CheckpointError naming the file.
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/json_input.h"
#include "core/format/plan.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (!hawada::json_depth_problem(text).empty()) return 0;
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  hawada::ModelShape dense;  // 2 layers, 8 heads in 2 kv groups (the default traits), head_dim 8
  dense.layers = 2, dense.hidden = 64, dense.heads = 8, dense.kv_heads = 2, dense.head_dim = 8, dense.ffn = 96;
  dense.traits.drop_layers = true;  // kept_layers may drop a block
  try {
    const hawada::Plan p = hawada::plan_from_json(j, dense, "fuzz/plan.json");
    if (p.heads.size() != 2 || p.ffn.size() != 2) __builtin_trap();
    for (size_t l = 0; l < 2; ++l) {
      for (int64_t h : p.heads[l])
        if (h < 0 || h >= dense.heads) __builtin_trap();
      for (int64_t f : p.ffn[l])
        if (f < 0 || f >= dense.ffn) __builtin_trap();
    }
    for (int64_t h : p.hidden)
      if (h < 0 || h >= dense.hidden) __builtin_trap();
    if (static_cast<int64_t>(p.layers.size()) != p.chosen.shape.layers) __builtin_trap();
    for (int64_t l : p.layers)
      if (l < 0 || l >= dense.layers) __builtin_trap();
    if (!hawada::transformers_violation(p.chosen.shape, dense).empty()) __builtin_trap();
  } catch (const hawada::CheckpointError& e) {
    if (std::string(e.what()).find("fuzz/plan.json") == std::string::npos) __builtin_trap();
  }
  return 0;
}
