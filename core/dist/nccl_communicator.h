// Communicator over NCCL for CUDA tensors (compiled only with HAWADA_WITH_CUDA). One GPU per local
// rank; the unique id travels by MPI_Bcast. Collectives run on LibTorch's current CUDA stream, and a
// watchdog polls for completion and for NCCL's asynchronous errors: past the timeout the communicator
// is aborted and a CommError thrown, so a stuck collective never hangs the job.
#pragma once

#include <memory>

#include "core/dist/communicator.h"

namespace hawada {

/// NCCL backend.
class NcclCommunicator final : public Communicator {
 public:
  /// Uses GPU `device.index()` (the local rank's GPU). CommError when NCCL or CUDA fail.
  NcclCommunicator(const at::Device& device, double timeout_s);
  ~NcclCommunicator() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "nccl"; }
  void all_reduce(at::Tensor& tensor, Op op) override;
  void broadcast(at::Tensor& tensor, int root) override;
  at::Tensor all_gather(const at::Tensor& tensor) override;
  void barrier() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace hawada
