#pragma once
// The CUDA runtime as hnrnn's kernels use it: the device guard and stream, dynamic shared
// memory, launches (plain and cooperative), the grid barrier. rnn.cu and zoo_cell.cu reach the runtime only through these names, so that
// tests/cuda_emulation can compile the same sources as C++ and run every kernel on the CPU: it
// defines HNRNN_CUDA_EMULATION and its own versions of everything below.
#ifndef HNRNN_CUDA_EMULATION
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <math_constants.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

namespace hnrnn::cuda {

using Stream = cudaStream_t;
using DeviceGuard = c10::cuda::CUDAGuard;

inline Stream current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// The running block's dynamic shared memory (the `smem` bytes of its launch).
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char hnrnn_dynamic_smem[];
  return reinterpret_cast<T*>(hnrnn_dynamic_smem);
}

// A device attribute, queried once per device (0: not queried yet).
template <cudaDeviceAttr kAttribute>
int device_attribute(int device) {
  static std::array<std::atomic<int>, 64> cached{};
  const bool cacheable = device >= 0 && device < static_cast<int>(cached.size());
  int value = cacheable ? cached[device].load(std::memory_order_relaxed) : 0;
  if (value == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttribute, device));
    if (cacheable) cached[device].store(value, std::memory_order_relaxed);
  }
  return value;
}

// The most dynamic shared memory a block may opt in to on `device`.
inline int64_t max_dynamic_smem(int device) {
  return device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(device);
}

inline int64_t sm_count(int device) { return device_attribute<cudaDevAttrMultiProcessorCount>(device); }

// More than the default 48 KiB of dynamic shared memory must be opted in to, per kernel and
// device. Each kernel's opt-in is raised only when a launch needs more than it already has: a
// driver call on every launch is host time the small recurrences cannot spare.
template <typename... Params>
void allow_dynamic_smem(void (*kernel)(Params...), size_t smem) {
  if (smem <= 48 * 1024) return;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> allowed;  // (kernel, device) -> bytes
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  size_t& bytes = allowed[{reinterpret_cast<const void*>(kernel), device}];
  if (smem > bytes) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    bytes = smem;
  }
}

// kernel<<<grid, block, smem, stream>>>(args...), checked.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Stream stream, Args&&... args) {
  allow_dynamic_smem(kernel, smem);
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The most blocks of `kernel` (`threads` threads, `smem` bytes each) the device runs at once: the
// largest grid a cooperative launch of it may have (0 where cooperative launches are unsupported).
// Asked of the runtime once per (kernel, threads, smem, device).
template <typename... Params>
int64_t co_resident_blocks(void (*kernel)(Params...), int threads, size_t smem, int device) {
  if (device_attribute<cudaDevAttrCooperativeLaunch>(device) == 0) return 0;
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, size_t, int>, int64_t> blocks;
  const std::tuple<const void*, int, size_t, int> key{reinterpret_cast<const void*>(kernel), threads, smem, device};
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = blocks.find(key);
    if (it != blocks.end()) return it->second;
  }
  allow_dynamic_smem(kernel, smem);
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  const int64_t n = static_cast<int64_t>(per_sm) * sm_count(device);
  std::lock_guard<std::mutex> lock(mutex);
  blocks[key] = n;
  return n;
}

// A cooperative launch: every block runs at once, so they may meet at grid_sync(). The grid must
// not exceed co_resident_blocks.
template <typename... Params, typename... Args>
void launch_cooperative(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Stream stream,
                        Args&&... args) {
  allow_dynamic_smem(kernel, smem);
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  std::apply(
      [&](auto&... p) {
        void* pointers[] = {static_cast<void*>(&p)...};
        C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, pointers,
                                                   smem, stream));
      },
      params);
}

// The grid barrier of a cooperative launch: every thread of every block arrives before any
// leaves, and what each wrote before it is visible to all after it.
__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }

// A load of what another block wrote during this launch: from L2, since an SM's L1 is not kept
// coherent with the other SMs' writes.
template <typename T>
__device__ __forceinline__ T load_from_grid(const T* p) {
  return __ldcg(p);
}

}  // namespace hnrnn::cuda
#endif  // HNRNN_CUDA_EMULATION
