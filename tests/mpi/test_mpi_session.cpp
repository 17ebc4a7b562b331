// Runs under `mpiexec -n 2` (ctest): the MPI session, process info and the MPI check macro.
#include <gtest/gtest.h>

#include "core/base/errors.h"
#include "core/base/process.h"
#include "core/dist/mpi_session.h"

namespace hawada {
namespace {

TEST(MpiSession, TwoRanksOnOneHost) {
  const auto& p = process_info();
  EXPECT_EQ(p.size, 2);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  EXPECT_EQ(p.rank, rank);
  EXPECT_EQ(p.local_size, 2);
  EXPECT_EQ(p.local_rank, p.rank);
  EXPECT_FALSE(p.host.empty());
}

TEST(MpiSession, CollectivesAgree) {
  int mine = process_info().rank + 1, sum = 0;
  HAWADA_CHECK_MPI(MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD));
  EXPECT_EQ(sum, 3);
}

TEST(MpiSession, FailedCallThrowsCommErrorNamingCallRankAndHost) {
  int value = 0;
  try {
    HAWADA_CHECK_MPI(MPI_Send(&value, 1, MPI_INT, /*dest=*/99, 0, MPI_COMM_WORLD));
    ADD_FAILURE() << "MPI_Send to rank 99 of 2 did not fail";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("MPI_Send"), std::string::npos) << what;
    EXPECT_NE(what.find(process_label()), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace hawada
