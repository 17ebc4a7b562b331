// main() of the multi-rank GoogleTest binaries: one MpiSession around the tests, and a job that
// fails when any rank's tests failed.
#include <gtest/gtest.h>

#include "core/dist/mpi_session.h"

int main(int argc, char** argv) {
  hawada::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int local = RUN_ALL_TESTS(), global = 0;
  MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return global;
}
