#include "core/base/hash.h"

#define XXH_STATIC_LINKING_ONLY  // the state's layout, to keep it inside Hasher
#include <xxhash.h>

namespace hawada {
namespace {

static_assert(sizeof(XXH64_state_t) <= 128 && alignof(XXH64_state_t) <= 8, "Hasher::state_ holds an XXH64_state_t");

XXH64_state_t* state(unsigned char* bytes) { return reinterpret_cast<XXH64_state_t*>(bytes); }
const XXH64_state_t* state(const unsigned char* bytes) { return reinterpret_cast<const XXH64_state_t*>(bytes); }

}  // namespace

Hasher::Hasher(uint64_t seed) { XXH64_reset(state(state_), seed); }

void Hasher::update(const void* data, size_t size) {
  if (size > 0) XXH64_update(state(state_), data, size);
}

uint64_t Hasher::digest() const { return XXH64_digest(state(state_)); }

std::string hex64(uint64_t value) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, value >>= 4) s[static_cast<size_t>(i)] = digits[value & 15];
  return s;
}

}  // namespace hawada
