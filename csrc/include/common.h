#pragma once
// Shared by CPU and CUDA kernels.
#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <limits>

#ifdef __CUDACC__
#define HNRNN_HOST_DEVICE __host__ __device__
#else
#define HNRNN_HOST_DEVICE
#endif

namespace hnrnn {

// HNRNN_DEBUG_FILL_NAN=1 (read once, at the first allocation): every kernel buffer starts as
// NaN (integers: their largest value), so a kernel that leaves part of an output unwritten
// fails the tests instead of passing on whatever the allocator handed back. The tests set it.
inline bool debug_fill_nan() {
  static const bool on = [] {
    const char* v = std::getenv("HNRNN_DEBUG_FILL_NAN");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return on;
}

// The GRU / RNN workspace at element `offset`, or null where none is saved (save = false: a
// forward no backward follows). The CPU and CUDA kernels address their workspace through this
// and store to it only where it is not null.
template <typename T>
HNRNN_HOST_DEVICE inline T* ws_at(T* ws, int64_t offset) {
  return ws == nullptr ? nullptr : ws + offset;
}

// at::empty for kernel outputs and scratch buffers (filled with NaN under the switch above).
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (debug_fill_nan()) {
    if (at::isFloatingType(t.scalar_type()) || at::isComplexType(t.scalar_type())) {
      t.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, t.scalar_type(), "hnrnn_empty_output", [&] {
        t.fill_(std::numeric_limits<scalar_t>::max());
      });
    }
  }
  return t;
}

}  // namespace hnrnn
