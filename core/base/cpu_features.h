// What this CPU can do, for choosing kernels.
#pragma once

namespace hawada {

/// True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16). Without them,
/// LibTorch's bf16 GEMM runs far slower than fp32 (measured 19 vs 100-150 GFLOP/s on 2 AVX2 cores).
/// HAWADA_NATIVE_BF16=0/1 overrides the detection.
bool cpu_has_native_bf16_matmul();

}  // namespace hawada
