// Communicator over MPI_COMM_WORLD for CPU tensors.
#pragma once

#include <mpi.h>

#include "core/dist/communicator.h"

namespace hawada {

/// MPI backend: CPU tensors of float32/64, int32/64, uint8 natively; bf16 and fp16 are reduced in
/// fp32 (MPI has no such types) and written back. A collective that has not finished after `timeout_s` throws
/// CommError naming it, its size and comm_context() (main then aborts the job).
class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_s = 600);
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "mpi"; }
  void all_reduce(at::Tensor& tensor, Op op) override;
  void broadcast(at::Tensor& tensor, int root) override;
  at::Tensor all_gather(const at::Tensor& tensor) override;
  void barrier() override;

 private:
  void wait(MPI_Request& request, const char* op, size_t bytes) const;
  double timeout_s_ = 600;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace hawada
