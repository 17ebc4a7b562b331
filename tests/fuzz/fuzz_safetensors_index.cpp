// libFuzzer target: the sharded-checkpoint index parser (model.safetensors.index.json). Any input
// must parse or throw CheckpointError; a parsed index must round-trip through index_to_json.
#include <cstdint>
#include <string_view>

#include "core/base/errors.h"
#include "core/format/safetensors_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hawada::safetensors;
  ShardIndex index;
  try {
    index = parse_index(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.index.json");
  } catch (const hawada::CheckpointError&) {
    return 0;
  }
  ShardIndex again = parse_index(index_to_json(index), "roundtrip.index.json");
  if (again.weight_map != index.weight_map || again.total_size != index.total_size) __builtin_trap();
  return 0;
}
