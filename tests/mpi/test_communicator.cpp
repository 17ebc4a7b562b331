// Runs under `mpiexec -n 2` (ctest): the MPI communicator's collectives and its refusals.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "core/base/errors.h"
#include "core/base/process.h"
#include "core/dist/communicator.h"
#include "core/dist/mpi_session.h"

namespace hawada {
namespace {

std::unique_ptr<Communicator> cpu() { return make_communicator("auto", at::kCPU, 60); }

TEST(MpiCommunicator, AllReduceSumAndMeanForEveryDtype) {
  auto comm = cpu();
  ASSERT_EQ(comm->backend(), "mpi");
  ASSERT_EQ(comm->size(), 2);
  const int r = comm->rank();
  for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kInt, at::kLong}) {
    SCOPED_TRACE(c10::toString(dtype));
    at::Tensor t = at::arange(6, at::kFloat).add(10 * r).to(dtype);
    comm->all_reduce(t, Communicator::Op::sum);
    EXPECT_TRUE(at::equal(t, at::arange(6, at::kFloat).mul(2).add(10).to(dtype)));
    if (at::isFloatingType(dtype)) {
      at::Tensor m = at::full({3}, static_cast<double>(r + 1), dtype);
      comm->all_reduce(m, Communicator::Op::mean);
      EXPECT_TRUE(at::allclose(m.to(at::kFloat), at::full({3}, 1.5)));
    }
  }
  at::Tensor strided = at::zeros({4, 4}).t().add(r);  // non-contiguous: reduced and written back in place
  comm->all_reduce(strided, Communicator::Op::sum);
  EXPECT_TRUE(at::equal(strided, at::ones({4, 4})));
}

TEST(MpiCommunicator, BroadcastAndAllGather) {
  auto comm = cpu();
  const int r = comm->rank();
  at::Tensor b = at::full({2, 3}, r == 1 ? 7.0 : 0.0, at::kBFloat16);
  comm->broadcast(b, 1);
  EXPECT_TRUE(at::equal(b, at::full({2, 3}, 7.0, at::kBFloat16)));
  at::Tensor g = comm->all_gather(at::full({3}, static_cast<int64_t>(r), at::kLong));
  EXPECT_EQ(g.sizes(), (at::IntArrayRef{2, 3}));
  EXPECT_TRUE(at::equal(g[0], at::zeros({3}, at::kLong)));
  EXPECT_TRUE(at::equal(g[1], at::ones({3}, at::kLong)));
  comm->barrier();
}

TEST(MpiCommunicator, RefusesWhatItCannotServe) {
#ifndef HAWADA_WITH_CUDA
  EXPECT_THROW(make_communicator("nccl", at::kCPU, 60), CommError);
#endif
  EXPECT_THROW(make_communicator("mpi", at::Device(at::kCUDA, 0), 60), CommError);
  auto comm = cpu();
  at::Tensor complex = at::zeros({2}, at::kComplexFloat);
  EXPECT_THROW(comm->all_reduce(complex, Communicator::Op::sum), CommError);
}

}  // namespace
}  // namespace hawada
