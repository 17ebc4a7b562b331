// Content hashing for fingerprints: the XXH64 algorithm (Yann Collet's public specification),
// streaming, about 10 GB/s per core, so hashing a 2.5 GB checkpoint is dominated by reading it.
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
  uint64_t v_[4];
  uint64_t total_ = 0;
  uint8_t buffer_[32];
  size_t buffered_ = 0;
  uint64_t seed_;
};

/// 16 lowercase hex digits.
std::string hex64(uint64_t value);

}  // namespace hawada
