// Collectives over the ranks of a job, for tensors: the data-parallel part of training.
//
// Contract (as in c10d's Backend): every rank calls the same collectives, in the same order, with
// tensors of the same shape and dtype. Calls are blocking. A collective that does not finish within
// the timeout is an error (CommError), not a hang. Backends live in their own files:
// MpiCommunicator (CPU tensors) and NcclCommunicator (CUDA tensors, only with HAWADA_WITH_CUDA).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <ATen/core/Tensor.h>

namespace hawada {

/// A group of ranks that exchange tensors.
class Communicator {
 public:
  enum class Op { sum, mean };
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// "mpi" or "nccl".
  virtual std::string_view backend() const = 0;
  /// In place: every rank ends with the sum (or mean) of all ranks' tensors.
  virtual void all_reduce(at::Tensor& tensor, Op op) = 0;
  /// In place: every rank ends with root's tensor.
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  /// Every rank's tensor stacked along a new first dimension [size, ...], in rank order.
  virtual at::Tensor all_gather(const at::Tensor& tensor) = 0;
  virtual void barrier() = 0;
};

/// What this process is doing, for the message of a collective that times out (e.g. "train_gates step 12"); set by
/// the training loop at each step and by the runner at each stage.
void set_comm_context(std::string what);
const std::string& comm_context();

/// The backend the config asks for ("auto" = NCCL for CUDA devices when compiled in, else MPI).
/// Requires an active MpiSession (NCCL's unique id travels by MPI_Bcast). CommError when the
/// requested backend cannot serve the device.
std::unique_ptr<Communicator> make_communicator(std::string_view backend, const at::Device& device, double timeout_s);

}  // namespace hawada
