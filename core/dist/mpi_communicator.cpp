#include "core/dist/mpi_communicator.h"

#include <ATen/ATen.h>

#include <chrono>
#include <limits>
#include <thread>

#include "core/base/errors.h"
#include "core/base/process.h"
#include "core/dist/mpi_session.h"

namespace hawada {
namespace {

MPI_Datatype mpi_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
    case at::kInt:
      return MPI_INT32_T;
    case at::kLong:
      return MPI_INT64_T;
    case at::kByte:
      return MPI_UINT8_T;
    case at::kBool:
      return MPI_C_BOOL;
    default:
      return MPI_DATATYPE_NULL;
  }
}

void check_cpu(const at::Tensor& t, const char* op) {
  if (t.nbytes() > static_cast<size_t>(std::numeric_limits<int>::max()))
    throw CommError(std::string("MPI communicator: ") + op + " of " + std::to_string(t.nbytes()) +
                    " bytes exceeds MPI's int count; split the tensor");
  if (!t.device().is_cpu())
    throw CommError(std::string("MPI communicator: ") + op + " needs a CPU tensor, got one on " + t.device().str() +
                    " (use dist.backend = \"nccl\" for GPUs)");
}

// Runs f on a contiguous tensor of an MPI-native dtype, copying back into `t` if needed.
template <class F>
void with_native(at::Tensor& t, F&& f) {
  const bool widen = mpi_type(t.scalar_type()) == MPI_DATATYPE_NULL;
  if (widen && !at::isFloatingType(t.scalar_type()))
    throw CommError(std::string("MPI communicator: unsupported dtype ") + c10::toString(t.scalar_type()));
  at::Tensor work = widen ? t.to(at::kFloat).contiguous() : t.contiguous();
  f(work);
  if (!work.is_same(t)) t.copy_(work);
}

}  // namespace

void MpiCommunicator::wait(MPI_Request& request, const char* op, size_t bytes) const {
  // MPI's blocking collectives never return while a peer is stopped (SIGSTOP, a hung GPU, a swapped-out node),
  // and Open MPI spins at 100% CPU meanwhile; polling a non-blocking one gives a deadline, and short sleeps after
  // the first ~1 ms leave the core to whatever else runs on it.
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
  int done = 0;
  for (int polls = 0;; ++polls) {
    HAWADA_CHECK_MPI(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done) return;
    if (polls > 1000) {
      if (Clock::now() > deadline)
        throw CommError("MPI " + std::string(op) + " of " + std::to_string(bytes) + " bytes did not finish within " +
                        "dist.timeout_s = " + std::to_string(static_cast<int64_t>(timeout_s_)) + " s" +
                        (comm_context().empty() ? std::string() : " (" + comm_context() + ")") + " on " +
                        process_label() + ": a rank of " + std::to_string(size_) +
                        " is stopped, hung or far behind; the job is aborted");
      std::this_thread::sleep_for(std::chrono::microseconds(polls > 5000 ? 1000 : 50));
    }
  }
}

MpiCommunicator::MpiCommunicator(double timeout_s) : timeout_s_(timeout_s) {
  if (!MpiSession::active())
    throw CommError("MPI communicator: MPI is not initialised (run under hawada-pipeline run)");
  HAWADA_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  HAWADA_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size_));
}

void MpiCommunicator::all_reduce(at::Tensor& tensor, Op op) {
  check_cpu(tensor, "all_reduce");
  with_native(tensor, [&](at::Tensor& t) {
    MPI_Request request;
    HAWADA_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t.scalar_type()),
                                    MPI_SUM, MPI_COMM_WORLD, &request));
    wait(request, "all_reduce", t.nbytes());
    if (op == Op::mean) t.div_(size_);
  });
}

void MpiCommunicator::broadcast(at::Tensor& tensor, int root) {
  check_cpu(tensor, "broadcast");
  // Broadcast moves bytes: any dtype goes as raw bytes.
  at::Tensor work = tensor.contiguous();
  MPI_Request request;
  HAWADA_CHECK_MPI(
      MPI_Ibcast(work.data_ptr(), static_cast<int>(work.nbytes()), MPI_BYTE, root, MPI_COMM_WORLD, &request));
  wait(request, "broadcast", work.nbytes());
  if (!work.is_same(tensor)) tensor.copy_(work);
}

at::Tensor MpiCommunicator::all_gather(const at::Tensor& tensor) {
  check_cpu(tensor, "all_gather");
  const at::Tensor in = tensor.contiguous();
  std::vector<int64_t> shape{size_};
  shape.insert(shape.end(), in.sizes().begin(), in.sizes().end());
  at::Tensor out = at::empty(shape, in.options());
  MPI_Request request;
  HAWADA_CHECK_MPI(MPI_Iallgather(in.data_ptr(), static_cast<int>(in.nbytes()), MPI_BYTE, out.data_ptr(),
                                  static_cast<int>(in.nbytes()), MPI_BYTE, MPI_COMM_WORLD, &request));
  wait(request, "all_gather", in.nbytes());
  return out;
}

void MpiCommunicator::barrier() {
  MPI_Request request;
  HAWADA_CHECK_MPI(MPI_Ibarrier(MPI_COMM_WORLD, &request));
  wait(request, "barrier", 0);
}

}  // namespace hawada
