#include "core/dist/communicator.h"

#include <string>
#include <utility>

#include "core/base/errors.h"
#include "core/dist/mpi_communicator.h"
#ifdef HAWADA_WITH_CUDA
#include "core/dist/nccl_communicator.h"
#endif

namespace hawada {
namespace {
std::string& context() {
  static std::string what;
  return what;
}
}  // namespace

void set_comm_context(std::string what) { context() = std::move(what); }
const std::string& comm_context() { return context(); }

std::unique_ptr<Communicator> make_communicator(std::string_view backend, const at::Device& device, double timeout_s) {
  const bool want_nccl = backend == "nccl" || (backend == "auto" && device.is_cuda());
  if (!want_nccl) {
    if (device.is_cuda())
      throw CommError("dist.backend = \"mpi\" moves CPU tensors; the device is " + device.str() +
                      " (use \"nccl\" or \"auto\")");
    return std::make_unique<MpiCommunicator>(timeout_s);
  }
#ifdef HAWADA_WITH_CUDA
  return std::make_unique<NcclCommunicator>(device, timeout_s);
#else
  (void)timeout_s;
  throw CommError("dist.backend = \"" + std::string(backend) +
                  "\" needs NCCL, but this hawada-pipeline was built without CUDA/NCCL (HAWADA_WITH_CUDA off)");
#endif
}

}  // namespace hawada
