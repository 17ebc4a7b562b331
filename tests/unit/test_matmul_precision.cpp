// core/prune/matmul_precision.h: inside HeadMatmulScope, with the process setting on, an fp32 matrix product
// (forward and backward) on a CPU with native bf16 is the exact product of the bf16-rounded inputs accumulated
// in fp32, with fp32 results; outside it, or with the setting off, it is the fp32 product, bit for bit.
// (oneDNN takes the bf16 path for head-sized products only: at 64 x 96 x 200 it stays fp32, so the shapes
// here are a small head's. tests/hf/test_teacher_cache.py checks the stages with it.)
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "core/base/cpu_features.h"
#include "core/prune/matmul_precision.h"

namespace hawada {
namespace {

// Turns the process setting on for one test, and off again after.
struct Bf16Head {
  explicit Bf16Head(bool on) { set_bf16_head_matmul(on); }
  ~Bf16Head() { set_bf16_head_matmul(false); }
};

double max_rel(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() /
         b.to(at::kDouble).abs().max().item<double>();
}

TEST(HeadMatmul, OffOrOutsideTheScopeIsTheFp32Product) {
  at::manual_seed(1);
  const at::Tensor x = at::randn({64, 96}), w = at::randn({200, 96});
  const at::Tensor fp32 = at::linear(x, w);
  {
    const Bf16Head off(false);
    const HeadMatmulScope scope;
    EXPECT_TRUE(at::equal(at::linear(x, w), fp32));
  }
  const Bf16Head on(true);
  { const HeadMatmulScope scope; }
  EXPECT_TRUE(at::equal(at::linear(x, w), fp32)) << "the scope restores the precision it found";
}

TEST(HeadMatmul, InsideTheScopeBf16InputsFp32AccumulationForwardAndBackward) {
  if (!cpu_has_native_bf16_matmul()) GTEST_SKIP() << "this CPU has no native bf16 (AMX, AVX512-BF16)";
  if (!bf16_head_matmul_engages())
    GTEST_SKIP() << "this CPU has native bf16, but LibTorch's oneDNN keeps fp32 matmuls in fp32 here (no AMX?): "
                    "the head runs in fp32 (model.head_matmul's auto)";
  at::manual_seed(2);
  const at::Tensor x = at::randn({256, 256}).requires_grad_(true), w = at::randn({4096, 256});
  const at::Tensor g = at::randn({256, 4096});
  const at::Tensor fp32 = at::linear(x, w).detach();
  auto rounded = [](const at::Tensor& t) { return t.detach().to(at::kBFloat16).to(at::kDouble); };
  const Bf16Head on(true);
  at::Tensor y;
  {
    const HeadMatmulScope scope;
    y = at::linear(x, w);
    y.backward(g);
  }
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  // The exact product of the rounded inputs, to fp32 accumulation (~1e-6 here), not the fp32 product (~1e-3).
  EXPECT_LT(max_rel(y, at::linear(rounded(x), rounded(w))), 1e-5);
  EXPECT_GT(max_rel(y, fp32), 1e-4);
  EXPECT_LT(max_rel(y, fp32), 2e-2);
  EXPECT_LT(max_rel(x.grad(), at::mm(rounded(g), rounded(w))), 1e-5);
  EXPECT_TRUE(at::equal(at::linear(x, w).detach(), fp32)) << "and fp32 again after the scope";
}

}  // namespace
}  // namespace hawada
