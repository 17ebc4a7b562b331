// MPI is initialised and finalised in exactly one place: an MpiSession owned by main.
//
// Contract for everything that communicates: every collective is called in the same order on every
// rank. An exception on one rank must end the whole job (main calls abort()), never leave the other
// ranks waiting in a collective.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>

#include "core/base/errors.h"

namespace hawada {

/// RAII owner of MPI_Init_thread / MPI_Finalize. Errors on MPI_COMM_WORLD return codes (checked by
/// HAWADA_CHECK_MPI) instead of aborting inside MPI.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int rank() const;
  int size() const;
  /// Ends every rank of the job with `code` (MPI_Abort); used when one rank fails.
  [[noreturn]] void abort(int code) const;
  /// True between construction and destruction of the session.
  static bool active();
};

/// Small collectives on MPI_COMM_WORLD for control flow between ranks (the data-parallel
/// communicator for tensors comes separately). Without an MpiSession they act on a world of one. Each waits at most
/// a multiple of the timeout set by set_timeout, then throws CommError naming the call and comm_context(); unset,
/// forever. `Wait::step` (the collectives inside a training step, where the ranks' work is balanced) waits the
/// timeout itself; `Wait::stage` (the default: a stage's control flow, which also waits for rank 0's own work such as
/// hashing a dataset, checking a cache or verifying an export, or for the slowest rank's share) ten times as long.
namespace world {
enum class Wait { step, stage };
void set_timeout(double timeout_s);
void barrier();
uint64_t broadcast(uint64_t value, int root = 0, Wait wait = Wait::stage);
int64_t sum(int64_t value, Wait wait = Wait::stage);
int64_t max(int64_t value, Wait wait = Wait::stage);
}  // namespace world

namespace detail {
[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);
}

}  // namespace hawada

/// Checks an MPI call; throws CommError with MPI's own message, the call, file:line, rank and host.
#define HAWADA_CHECK_MPI(call)                                                                                       \
  do {                                                                                                               \
    int hawada_mpi_rc_ = (call);                                                                                     \
    if (hawada_mpi_rc_ != MPI_SUCCESS) ::hawada::detail::throw_mpi_error(hawada_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)
