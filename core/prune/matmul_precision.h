// The LM head's matrix products in bf16 with fp32 accumulation and fp32 results, where the CPU has native
// bf16 (AMX, AVX512-BF16): oneDNN's bf16 mode for fp32 matmuls, about twice fp32's speed there. The head is
// the largest GEMM of a small LM with a large vocabulary (a third of the FLOPs at 32K, most at 262K).
#pragma once

namespace hawada {

/// Sets, for this process, whether HeadMatmulScope switches fp32 matmuls to bf16 products (the runner sets
/// it from model.head_matmul; off by default, so tools and tests compute in fp32 unless they ask).
void set_bf16_head_matmul(bool on);
/// What set_bf16_head_matmul last set.
bool bf16_head_matmul();
/// Whether this process's LibTorch really runs fp32 CPU matmuls as bf16 products when asked: measured once (a
/// head-sized 256 x 256 x 4096 product under the bf16 precision must differ from the fp32 one). A CPU flag is not
/// enough: on an AVX512-BF16 CPU without AMX, oneDNN's bf16 mode left the products in fp32.
bool bf16_head_matmul_engages();

/// While alive, and bf16_head_matmul() is set, fp32 matrix products on the CPU (a head's forward and the
/// backward run inside the scope) take bf16 inputs, accumulate in fp32 and give fp32 results; the previous
/// precision comes back after. bf16 tensors and GPU products are unaffected.
class HeadMatmulScope {
 public:
  HeadMatmulScope();
  ~HeadMatmulScope();
  HeadMatmulScope(const HeadMatmulScope&) = delete;
  HeadMatmulScope& operator=(const HeadMatmulScope&) = delete;

 private:
  bool active_ = false;
  int previous_ = 0;
};

}  // namespace hawada
