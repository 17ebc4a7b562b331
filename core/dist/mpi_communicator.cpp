#include "core/dist/mpi_communicator.h"

#include <ATen/ATen.h>

#include <limits>

#include "core/base/errors.h"
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

MpiCommunicator::MpiCommunicator() {
  if (!MpiSession::active())
    throw CommError("MPI communicator: MPI is not initialised (run under hawada-pipeline run)");
  HAWADA_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  HAWADA_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size_));
}

void MpiCommunicator::all_reduce(at::Tensor& tensor, Op op) {
  check_cpu(tensor, "all_reduce");
  with_native(tensor, [&](at::Tensor& t) {
    HAWADA_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t.scalar_type()),
                                   MPI_SUM, MPI_COMM_WORLD));
    if (op == Op::mean) t.div_(size_);
  });
}

void MpiCommunicator::broadcast(at::Tensor& tensor, int root) {
  check_cpu(tensor, "broadcast");
  // Broadcast moves bytes: any dtype goes as raw bytes.
  at::Tensor work = tensor.contiguous();
  HAWADA_CHECK_MPI(MPI_Bcast(work.data_ptr(), static_cast<int>(work.nbytes()), MPI_BYTE, root, MPI_COMM_WORLD));
  if (!work.is_same(tensor)) tensor.copy_(work);
}

at::Tensor MpiCommunicator::all_gather(const at::Tensor& tensor) {
  check_cpu(tensor, "all_gather");
  const at::Tensor in = tensor.contiguous();
  std::vector<int64_t> shape{size_};
  shape.insert(shape.end(), in.sizes().begin(), in.sizes().end());
  at::Tensor out = at::empty(shape, in.options());
  HAWADA_CHECK_MPI(MPI_Allgather(in.data_ptr(), static_cast<int>(in.nbytes()), MPI_BYTE, out.data_ptr(),
                                 static_cast<int>(in.nbytes()), MPI_BYTE, MPI_COMM_WORLD));
  return out;
}

void MpiCommunicator::barrier() { HAWADA_CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD)); }

}  // namespace hawada
