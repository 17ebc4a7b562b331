// Forward-pass throughput of our models: tokens/s (LMs) or images/s (ViT). Same inputs and thread
// count as bench/forward_reference.py (transformers); bench/forward.sh runs both and prints the ratio.
//   bench_forward MODEL_DIR DTYPE(fp32|bf16) THREADS BATCH SEQ_LEN ITERS      (SEQ_LEN ignored for ViT)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "adapters/adapter.h"
#include "core/io/checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: bench_forward MODEL_DIR fp32|bf16 THREADS BATCH SEQ_LEN ITERS\n");
    return 2;
  }
  const std::string dir = argv[1], dtype = argv[2];
  const int threads = std::stoi(argv[3]), batch = std::stoi(argv[4]), seq = std::stoi(argv[5]),
            iters = std::stoi(argv[6]);
  at::set_num_threads(threads);
  const auto ckpt = hawada::HfCheckpoint::open(dir);
  const auto& adapter = hawada::adapter_for(ckpt.config(), ckpt.dir() / "config.json");
  const auto arch = adapter.summarize(ckpt.config(), ckpt.dir() / "config.json");
  const auto model = adapter.load(ckpt, {.dtype = dtype == "bf16" ? at::kBFloat16 : at::kFloat});
  at::manual_seed(0);
  hawada::Batch b;
  int64_t units = batch;  // images
  if (arch.vocab_size > 0) {
    b.input_ids = at::randint(0, arch.vocab_size, {batch, seq}, at::kLong);
    units = static_cast<int64_t>(batch) * seq;  // tokens
  } else {
    b.pixel_values = at::randn({batch, 3, arch.image_size, arch.image_size});
  }
  at::InferenceMode guard;
  model->logits(b);  // warm-up (oneDNN primitive creation)
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) model->logits(b);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  std::printf(
      "{\"impl\": \"hawada\", \"dtype\": \"%s\", \"threads\": %d, \"seconds_per_forward\": %.4f, "
      "\"%s_per_s\": %.2f}\n",
      dtype.c_str(), threads, s, arch.vocab_size > 0 ? "tokens" : "images", units / s);
  return 0;
}
