// libFuzzer target: the safetensors file parser (header length, JSON, entries, layout rules).
// Any input must either parse or throw CheckpointError; a crash, a sanitizer report or another
// exception type is a bug. A parsed header must survive a rebuild by the writer's layout code.
#include <cstdint>
#include <string>

#include "core/base/errors.h"
#include "core/format/safetensors_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hawada::safetensors;
  Header h;
  try {
    h = parse_file(data, size, "fuzz.safetensors");
  } catch (const hawada::CheckpointError&) {
    return 0;
  }
  std::vector<TensorSpec> specs;
  for (const auto& t : h.tensors) specs.push_back({t.name, t.dtype, t.shape});
  Layout layout = build_layout(specs, h.metadata, "rebuilt.safetensors");
  std::string bytes = layout.prefix_and_header;
  bytes.resize(layout.file_size(), '\0');
  Header again = parse_file(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "rebuilt.safetensors");
  if (again.tensors.size() != h.tensors.size()) __builtin_trap();
  for (const auto& t : h.tensors) {
    const TensorInfo* u = again.find(t.name);
    if (!u || u->dtype != t.dtype || u->shape != t.shape || u->nbytes() != t.nbytes()) __builtin_trap();
  }
  return 0;
}
