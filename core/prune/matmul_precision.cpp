#include "core/prune/matmul_precision.h"

#include <atomic>

#include <ATen/Context.h>

namespace hawada {
namespace {
std::atomic<bool> g_bf16_head{false};
}  // namespace

void set_bf16_head_matmul(bool on) { g_bf16_head.store(on); }
bool bf16_head_matmul() { return g_bf16_head.load(); }

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
