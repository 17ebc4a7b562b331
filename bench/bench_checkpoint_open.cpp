// Opens a model directory and creates a LibTorch tensor for every weight in its stored dtype, then
// reports wall time, resident memory growth and the bytes copied (0 when every tensor aliases the
// mapping). Prints one JSON line. The reference (Python safetensors) runs in bench/checkpoint_open.sh.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "core/io/checkpoint.h"

namespace {

long rss_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: bench_checkpoint_open MODEL_DIR\n");
    return 2;
  }
  const long rss0 = rss_kib();
  const auto t0 = std::chrono::steady_clock::now();
  const auto ckpt = hawada::HfCheckpoint::open(argv[1]);
  std::vector<at::Tensor> tensors;
  uint64_t copied = 0, bytes = 0;
  for (const auto& name : ckpt.tensor_names()) {
    tensors.push_back(ckpt.tensor(name));
    const auto& info = ckpt.info(name);
    bytes += info.nbytes();
    if (tensors.back().data_ptr() != ckpt.bytes(name)) copied += info.nbytes();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const long rss1 = rss_kib();
  std::printf(
      "{\"impl\": \"hawada\", \"tensors\": %zu, \"bytes\": %llu, \"seconds\": %.6f, \"rss_growth_mib\": %.1f, "
      "\"copied_bytes\": %llu}\n",
      tensors.size(), static_cast<unsigned long long>(bytes), seconds, (rss1 - rss0) / 1024.0,
      static_cast<unsigned long long>(copied));
  return 0;
}
