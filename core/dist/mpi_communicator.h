// Communicator over MPI_COMM_WORLD for CPU tensors.
#pragma once

#include "core/dist/communicator.h"

namespace hawada {

/// MPI backend: CPU tensors of float32/64, int32/64, uint8 natively; bf16 and fp16 are reduced in
/// fp32 (MPI has no such types) and written back.
class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator();
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "mpi"; }
  void all_reduce(at::Tensor& tensor, Op op) override;
  void broadcast(at::Tensor& tensor, int root) override;
  at::Tensor all_gather(const at::Tensor& tensor) override;
  void barrier() override;

 private:
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace hawada
