#pragma once
// The CUDA runtime as hnrnn's kernels use it: the device guard and stream, dynamic shared
// memory, launches. rnn.cu and zoo_cell.cu reach the runtime only through these names, so that
// tests/cuda_emulation can compile the same sources as C++ and run every kernel on the CPU: it
// defines HNRNN_CUDA_EMULATION and its own versions of everything below.
#ifndef HNRNN_CUDA_EMULATION
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <math_constants.h>

#include <array>
#include <atomic>
#include <cstdint>
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

// The most dynamic shared memory a block may opt in to on `device`: queried once per device.
inline int64_t max_dynamic_smem(int device) {
  static std::array<std::atomic<int>, 64> cached{};  // 0: not queried yet
  const bool cacheable = device >= 0 && device < static_cast<int>(cached.size());
  int bytes = cacheable ? cached[device].load(std::memory_order_relaxed) : 0;
  if (bytes == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (cacheable) cached[device].store(bytes, std::memory_order_relaxed);
  }
  return bytes;
}

// kernel<<<grid, block, smem, stream>>>(args...), checked; more than the default 48 KiB of
// dynamic shared memory is opted in to first.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Stream stream, Args&&... args) {
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace hnrnn::cuda
#endif  // HNRNN_CUDA_EMULATION
