// Who this process is in the job (rank, size, host), for logs and error messages. Set once by the
// MPI session; a process without MPI is rank 0 of 1.
#pragma once

#include <string>

namespace hawada {

/// This process's place in the job.
struct ProcessInfo {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string host;
};

/// The current process info (host filled on first use).
const ProcessInfo& process_info();
/// Called by MpiSession after MPI_Init.
void set_process_info(const ProcessInfo& info);
/// "rank 1/2 on host node7".
std::string process_label();

}  // namespace hawada
