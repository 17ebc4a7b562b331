#include "core/dist/device.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "core/base/errors.h"

// The CUDA parts are compiled only with CUDA (HAWADA_WITH_CUDA, set by CMake); the CPU build reports
// zeros for device memory and never sees a CUDA device.
#ifdef HAWADA_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace hawada {

c10::Device pick_device(DeviceRequest request, int local_rank, std::string_view where) {
  const bool gpu = at::hasCUDA() && at::getNumGPUs() > 0;
  if (request == DeviceRequest::cpu || (request == DeviceRequest::auto_ && !gpu)) return c10::Device(c10::kCPU);
  if (!gpu)
    throw ConfigError(std::string(where) + " = \"cuda\", but " +
                      (at::hasCUDA() ? "LibTorch sees no GPU" : "this LibTorch has no CUDA") +
                      " on this node (use \"auto\" or \"cpu\")");
  const int n = static_cast<int>(at::getNumGPUs());
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank % n));
}

std::string describe_device(const c10::Device& device) {
  if (device.is_cpu()) return fmt::format("cpu ({} threads)", at::get_num_threads());
#ifdef HAWADA_WITH_CUDA
  if (device.is_cuda()) {
    const auto* p = at::cuda::getDeviceProperties(device.index());
    return fmt::format("{} ({}, {:.1f} GiB)", device.str(), p->name,
                       static_cast<double>(p->totalGlobalMem) / (1ull << 30));
  }
#endif
  return device.str();
}

void synchronize(const c10::Device& device) {
#ifdef HAWADA_WITH_CUDA
  if (device.is_cuda()) at::cuda::getCurrentCUDAStream(device.index()).synchronize();
#else
  (void)device;
#endif
}

#ifdef HAWADA_WITH_CUDA
namespace {
// The caching allocator's statistics exist only once it has allocated on the device.
void touch_allocator(const c10::Device& device) { (void)at::empty({1}, at::TensorOptions().device(device)); }
}  // namespace
#endif

int64_t peak_device_memory(const c10::Device& device) {
#ifdef HAWADA_WITH_CUDA
  if (device.is_cuda()) {
    touch_allocator(device);
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
#else
  (void)device;
#endif
  return 0;
}

void reset_peak_device_memory(const c10::Device& device) {
#ifdef HAWADA_WITH_CUDA
  if (device.is_cuda()) {
    touch_allocator(device);
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
  }
#else
  (void)device;
#endif
}

namespace {
// The first number in `file` after `key` (a /proc/meminfo line's kB are scaled by `unit`); -1 when absent.
int64_t number_in(const char* file, const std::string& key, int64_t unit) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) != 0) continue;
    const std::string rest = line.substr(key.size());
    if (rest.find_first_of("0123456789") == std::string::npos) return -1;  // "max": no limit
    return std::stoll(rest.substr(rest.find_first_of("0123456789"))) * unit;
  }
  return -1;
}
}  // namespace

int64_t peak_host_memory() {
  if (const int64_t hwm = number_in("/proc/self/status", "VmHWM:", 1024); hwm >= 0) return hwm;
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

void reset_peak_host_memory() {
  std::ofstream refs("/proc/self/clear_refs");
  if (refs) refs << "5\n";  // 5: reset the peak resident set size (VmHWM) to the current one
}

int64_t host_memory_available() {
  if (const char* forced = std::getenv("HAWADA_HOST_MEMORY_BYTES"); forced && *forced) return std::atoll(forced);
  int64_t available = number_in("/proc/meminfo", "MemAvailable:", 1024);
  // cgroup v2: this process's group is the one line "0::/path" of /proc/self/cgroup.
  std::ifstream groups("/proc/self/cgroup");
  std::string line;
  while (std::getline(groups, line)) {
    if (line.rfind("0::", 0) != 0) continue;
    const std::string dir = "/sys/fs/cgroup" + line.substr(3);
    const int64_t max = number_in((dir + "/memory.max").c_str(), "", 1);
    const int64_t current = number_in((dir + "/memory.current").c_str(), "", 1);
    if (max > 0 && current >= 0) available = available < 0 ? max - current : std::min(available, max - current);
  }
  return available;
}

}  // namespace hawada
