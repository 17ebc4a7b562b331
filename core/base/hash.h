// Content hashing for fingerprints: XXH64 from libxxhash (Debian's libxxhash-dev), streaming, about
// 10 GB/s per core, so hashing a 2.5 GB checkpoint is dominated by reading it. Every fingerprint the
// pipeline ever wrote is an XXH64 digest, so caches and markers stay valid.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace hawada {

/// Streaming XXH64: update() any number of times, digest() at any point.
class Hasher {
 public:
  explicit Hasher(uint64_t seed = 0);
  void update(const void* data, size_t size);
  void update(std::string_view text) { update(text.data(), text.size()); }
  /// Hashes the value's bytes (fixed-width, little-endian on our targets).
  void update_u64(uint64_t value) { update(&value, sizeof value); }
  uint64_t digest() const;

 private:
  // libxxhash's XXH64_state_t (88 bytes in 0.8), held in place: no allocation, copyable, and no
  // xxhash.h in this header.
  alignas(8) unsigned char state_[128];
};

/// 16 lowercase hex digits.
std::string hex64(uint64_t value);

}  // namespace hawada
