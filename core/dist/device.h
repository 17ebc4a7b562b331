// Where a rank computes: the one place that decides the device, and what the device can report.
//
// `auto` is the rank's local GPU (cuda:<local rank>, one GPU per rank) when LibTorch sees one, else
// the CPU. Every stage and command asks here (stages through run_device(config)), so a CPU run and a
// GPU run take the same code path with another device.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <c10/core/Device.h>

namespace hawada {

/// What the config (`run.device`) asks for.
enum class DeviceRequest { auto_, cpu, cuda };

/// The device of this rank. `local_rank` picks the GPU (modulo the GPUs LibTorch sees). ConfigError
/// when `cuda` is asked for and LibTorch sees no GPU (`where` names the key or option).
c10::Device pick_device(DeviceRequest request, int local_rank, std::string_view where = "run.device");

/// "cuda:0 (NVIDIA H100 80GB HBM3, 79.2 GiB)" or "cpu (2 threads)".
std::string describe_device(const c10::Device& device);

/// Waits until the device has finished the work queued so far (timing); nothing on the CPU.
void synchronize(const c10::Device& device);

/// Peak bytes the caching allocator handed out on `device` since the last reset; 0 on the CPU.
int64_t peak_device_memory(const c10::Device& device);
/// Starts a new peak-memory interval on `device` (nothing on the CPU).
void reset_peak_device_memory(const c10::Device& device);

/// Peak resident set size of this process since the last reset_peak_host_memory (or its start), in bytes:
/// /proc/self/status's VmHWM, else getrusage's (which never resets).
int64_t peak_host_memory();
/// Starts a new host peak interval (Linux: writes 5 to /proc/self/clear_refs); nothing where it cannot.
void reset_peak_host_memory();

/// Bytes of host memory still available to this machine's processes: /proc/meminfo's MemAvailable, lowered to
/// what this process's cgroup (v2) may still take (memory.max - memory.current: a SLURM job's --mem), or
/// HAWADA_HOST_MEMORY_BYTES where set (to rehearse a smaller node). -1 when nothing can be read.
int64_t host_memory_available();

}  // namespace hawada
