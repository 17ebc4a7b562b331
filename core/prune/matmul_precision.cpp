#include "core/prune/matmul_precision.h"

#include <atomic>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>

namespace hawada {
namespace {
std::atomic<bool> g_bf16_head{false};
}  // namespace

void set_bf16_head_matmul(bool on) { g_bf16_head.store(on); }
bool bf16_head_matmul() { return g_bf16_head.load(); }

bool bf16_head_matmul_engages() {
  static const bool engages = [] {
    at::NoGradGuard no_grad;
    // A head-sized product: oneDNN keeps small ones in fp32.
    const at::Tensor x = at::linspace(-1.0, 1.0, 256 * 256).reshape({256, 256}).mul(37).sin();
    const at::Tensor w = at::linspace(-1.0, 1.0, 4096 * 256).reshape({4096, 256}).mul(91).cos();
    const at::Tensor fp32 = at::linear(x, w);
    auto& ctx = at::globalContext();
    const auto previous = ctx.float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL);
    ctx.setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, at::Float32Precision::BF16);
    const at::Tensor asked = at::linear(x, w);
    ctx.setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, previous);
    // bf16 inputs carry 8 bits: a relative difference near 1e-3; fp32 orders differ by ~1e-7.
    return ((asked - fp32).abs().max() / fp32.abs().max()).item<double>() > 1e-5;
  }();
  return engages;
}

HeadMatmulScope::HeadMatmulScope() : active_(g_bf16_head.load()) {
  if (!active_) return;
  auto& ctx = at::globalContext();
  previous_ = static_cast<int>(ctx.float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL));
  ctx.setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, at::Float32Precision::BF16);
}

HeadMatmulScope::~HeadMatmulScope() {
  if (!active_) return;
  at::globalContext().setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL,
                                          static_cast<at::Float32Precision>(previous_));
}

}  // namespace hawada
