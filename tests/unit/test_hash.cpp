// XXH64 against vectors from the reference implementation (Python package `xxhash` 4.1.0, computed
// once; input = bytes 0..255 repeated, first n bytes), whole and streamed in odd pieces.
#include <gtest/gtest.h>

#include <vector>

#include "core/base/hash.h"

namespace hawada {
namespace {

std::vector<uint8_t> data() {
  std::vector<uint8_t> d;
  for (int r = 0; r < 5; ++r)
    for (int i = 0; i < 256; ++i) d.push_back(static_cast<uint8_t>(i));
  return d;
}

const std::pair<size_t, uint64_t> kVectors[] = {
    {0, 0xef46db3751d8e999ULL},   {1, 0xe934a84adb052768ULL},    {3, 0xe5c7bb4533bc65ddULL},
    {4, 0xffced8604453cc1eULL},   {8, 0x884a173614b81b8dULL},    {31, 0xc346d2b59b4d8ee1ULL},
    {32, 0xcbf59c5116ff32b4ULL},  {33, 0x0c535d1acafb8eadULL},   {64, 0xf7c67301db6713f0ULL},
    {100, 0x6ac1e58032166597ULL}, {1000, 0x6ef436b00eba4078ULL}, {1280, 0xafc184ad7938a354ULL},
};

TEST(Hash, MatchesReferenceVectors) {
  const auto d = data();
  for (const auto& [n, want] : kVectors) {
    Hasher whole;
    whole.update(d.data(), n);
    EXPECT_EQ(whole.digest(), want) << "n=" << n;
    Hasher pieces;  // 1, 2, 3, ... byte pieces cross every buffer boundary
    size_t at = 0;
    for (size_t step = 1; at < n; ++step) {
      const size_t take = std::min(step, n - at);
      pieces.update(d.data() + at, take);
      at += take;
    }
    EXPECT_EQ(pieces.digest(), want) << "streamed n=" << n;
  }
  Hasher seeded(12345);
  seeded.update(d.data(), 100);
  EXPECT_EQ(seeded.digest(), 0x028ba1ae2de4de27ULL);
  EXPECT_EQ(hex64(0x028ba1ae2de4de27ULL), "028ba1ae2de4de27");
}

}  // namespace
}  // namespace hawada
