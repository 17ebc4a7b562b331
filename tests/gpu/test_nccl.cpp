// GPU only (label gpu): the NCCL communicator at world size 1 on the local GPU. Without CUDA/NCCL
// compiled in, or without a GPU, every test reports as skipped.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include "core/base/errors.h"
#include "core/dist/communicator.h"
#include "core/dist/mpi_session.h"

namespace hawada {
namespace {

bool have_gpu() {
#ifdef HAWADA_WITH_CUDA
  return at::hasCUDA();
#else
  return false;
#endif
}

TEST(NcclCommunicator, CollectivesAtWorldSizeOne) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA GPU (or built without CUDA/NCCL)";
  const at::Device gpu(at::kCUDA, 0);
  auto comm = make_communicator("auto", gpu, 60);
  ASSERT_EQ(comm->backend(), "nccl");
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kLong}) {
    at::Tensor t = at::arange(1000, at::TensorOptions().dtype(dtype).device(gpu));
    at::Tensor before = t.clone();
    comm->all_reduce(t, Communicator::Op::sum);
    EXPECT_TRUE(at::equal(t, before));
  }
  at::Tensor m = at::full({8}, 3.0, at::TensorOptions().device(gpu));
  comm->all_reduce(m, Communicator::Op::mean);
  EXPECT_TRUE(at::allclose(m.cpu(), at::full({8}, 3.0)));
  at::Tensor g = comm->all_gather(at::ones({4}, at::TensorOptions().device(gpu)));
  EXPECT_EQ(g.sizes(), (at::IntArrayRef{1, 4}));
  comm->broadcast(m, 0);
  comm->barrier();
  at::Tensor cpu_tensor = at::ones({2});
  EXPECT_THROW(comm->all_reduce(cpu_tensor, Communicator::Op::sum), CommError);
}

}  // namespace
}  // namespace hawada
