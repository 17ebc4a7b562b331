#include "core/dist/nccl_communicator.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <thread>

#include "core/base/errors.h"
#include "core/base/process.h"
#include "core/dist/mpi_session.h"

namespace hawada {
namespace detail {

[[noreturn]] void throw_nccl_error(int code, const char* call, const char* file, int line) {
  throw CommError("NCCL call " + std::string(call) + " failed at " + where(file, line) + " on " + process_label() +
                  ": " + ncclGetErrorString(static_cast<ncclResult_t>(code)));
}

[[noreturn]] void throw_cuda_error(int code, const char* call, const char* file, int line) {
  throw CommError("CUDA call " + std::string(call) + " failed at " + where(file, line) + " on " + process_label() +
                  ": " + cudaGetErrorString(static_cast<cudaError_t>(code)));
}

}  // namespace detail
}  // namespace hawada

/// Checks an NCCL call; throws CommError with NCCL's message, file:line, rank and host.
#define HAWADA_CHECK_NCCL(call)                                                                         \
  do {                                                                                                  \
    ncclResult_t hawada_nccl_rc_ = (call);                                                              \
    if (hawada_nccl_rc_ != ncclSuccess && hawada_nccl_rc_ != ncclInProgress)                            \
      ::hawada::detail::throw_nccl_error(static_cast<int>(hawada_nccl_rc_), #call, __FILE__, __LINE__); \
  } while (0)
/// Checks a CUDA runtime call; throws CommError with CUDA's message, file:line, rank and host.
#define HAWADA_CHECK_CUDA(call)                                                                         \
  do {                                                                                                  \
    cudaError_t hawada_cuda_rc_ = (call);                                                               \
    if (hawada_cuda_rc_ != cudaSuccess)                                                                 \
      ::hawada::detail::throw_cuda_error(static_cast<int>(hawada_cuda_rc_), #call, __FILE__, __LINE__); \
  } while (0)

namespace hawada {
namespace {

ncclDataType_t nccl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kHalf:
      return ncclFloat16;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kInt:
      return ncclInt32;
    case at::kLong:
      return ncclInt64;
    case at::kByte:
      return ncclUint8;
    default:
      throw CommError(std::string("NCCL communicator: unsupported dtype ") + c10::toString(t));
  }
}

}  // namespace

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  at::Device device{at::kCUDA, 0};
  double timeout_s = 600;
  bool aborted = false;

  // Waits for the work queued on `stream`; on timeout or an asynchronous NCCL error, aborts.
  void wait(cudaStream_t stream, const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    for (;;) {
      const cudaError_t q = cudaStreamQuery(stream);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) HAWADA_CHECK_CUDA(q);
      ncclResult_t async = ncclSuccess;
      HAWADA_CHECK_NCCL(ncclCommGetAsyncError(comm, &async));
      if (async != ncclSuccess && async != ncclInProgress) {
        abort();
        detail::throw_nccl_error(static_cast<int>(async), what, __FILE__, __LINE__);
      }
      if (std::chrono::steady_clock::now() > deadline) {
        abort();
        throw CommError(std::string("NCCL ") + what +
                        " did not finish within dist.timeout_s = " + std::to_string(timeout_s) + " s on " +
                        process_label() + " (a rank is missing or stuck); the communicator was aborted");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  void abort() {
    if (comm && !aborted) ncclCommAbort(comm);
    aborted = true;
  }
};

NcclCommunicator::NcclCommunicator(const at::Device& device, double timeout_s) : impl_(std::make_unique<Impl>()) {
  if (!device.is_cuda()) throw CommError("NCCL communicator needs a CUDA device, got " + device.str());
  if (!MpiSession::active())
    throw CommError("NCCL communicator: MPI is not initialised (the unique id travels by MPI)");
  rank_ = process_info().rank;
  size_ = process_info().size;
  impl_->device = device;
  impl_->timeout_s = timeout_s;
  HAWADA_CHECK_CUDA(cudaSetDevice(device.index()));
  ncclUniqueId id;
  if (rank_ == 0) HAWADA_CHECK_NCCL(ncclGetUniqueId(&id));
  HAWADA_CHECK_MPI(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD));
  HAWADA_CHECK_NCCL(ncclCommInitRank(&impl_->comm, size_, id, rank_));
}

NcclCommunicator::~NcclCommunicator() {
  if (impl_ && impl_->comm) {
    if (impl_->aborted) return;
    ncclCommDestroy(impl_->comm);
  }
}

void NcclCommunicator::all_reduce(at::Tensor& tensor, Op op) {
  if (!tensor.is_cuda())
    throw CommError("NCCL communicator: all_reduce needs a CUDA tensor, got " + tensor.device().str());
  c10::cuda::CUDAGuard guard(impl_->device);
  at::Tensor work = tensor.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(impl_->device.index()).stream();
  HAWADA_CHECK_NCCL(ncclAllReduce(work.data_ptr(), work.data_ptr(), static_cast<size_t>(work.numel()),
                                  nccl_type(work.scalar_type()), op == Op::mean ? ncclAvg : ncclSum, impl_->comm,
                                  stream));
  impl_->wait(stream, "all_reduce");
  if (!work.is_same(tensor)) tensor.copy_(work);
}

void NcclCommunicator::broadcast(at::Tensor& tensor, int root) {
  if (!tensor.is_cuda())
    throw CommError("NCCL communicator: broadcast needs a CUDA tensor, got " + tensor.device().str());
  c10::cuda::CUDAGuard guard(impl_->device);
  at::Tensor work = tensor.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(impl_->device.index()).stream();
  HAWADA_CHECK_NCCL(
      ncclBroadcast(work.data_ptr(), work.data_ptr(), work.nbytes(), ncclUint8, root, impl_->comm, stream));
  impl_->wait(stream, "broadcast");
  if (!work.is_same(tensor)) tensor.copy_(work);
}

at::Tensor NcclCommunicator::all_gather(const at::Tensor& tensor) {
  if (!tensor.is_cuda())
    throw CommError("NCCL communicator: all_gather needs a CUDA tensor, got " + tensor.device().str());
  c10::cuda::CUDAGuard guard(impl_->device);
  const at::Tensor in = tensor.contiguous();
  std::vector<int64_t> shape{size_};
  shape.insert(shape.end(), in.sizes().begin(), in.sizes().end());
  at::Tensor out = at::empty(shape, in.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(impl_->device.index()).stream();
  HAWADA_CHECK_NCCL(ncclAllGather(in.data_ptr(), out.data_ptr(), in.nbytes(), ncclUint8, impl_->comm, stream));
  impl_->wait(stream, "all_gather");
  return out;
}

void NcclCommunicator::barrier() {
  at::Tensor one = at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(impl_->device));
  all_reduce(one, Op::sum);
}

}  // namespace hawada
