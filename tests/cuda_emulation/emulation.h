#pragma once
// Runs hnrnn's CUDA kernels on the CPU, for the tests (tests/test_cuda_emulated.py): the CUDA
// sources are compiled as C++ against this header, which stands in for what they take from the
// CUDA runtime (csrc/cuda/launch.h and the CUDA keywords).
//
// A launch runs its blocks one after another. Each thread of a block is a fiber (ucontext) on
// its own stack; __syncthreads() switches back to the scheduler, which resumes the threads in
// turn, so every thread reaches the barrier before any passes it. What that makes testable:
//  * the kernels' indexing, barriers, carve-outs of shared memory and choice of path, run for
//    real on CPU tensors and compared with the CPU kernels;
//  * missing barriers: the threads can run in reverse order between barriers
//    (set_thread_order), and a race then changes the result;
//  * shared memory: the dynamic shared memory starts as NaN (0xFF bytes) and is followed by a
//    guard that must be intact after each block; a launch asking for more than an H100 / H200
//    block can have (227 KiB) or more than 1024 threads fails, as it would on the device.
// Not modelled: warps (the kernels use no warp-level primitives), the memory model, and the
// device's math library (the host paths of rnn_math.h run instead).
#define HNRNN_CUDA_EMULATION 1
#define HNRNN_WITH_CUDA 1  // the CUDA half is here (emulated): rnn_dispatch.h declares its functions

#include <torch/extension.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------- CUDA keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one instance per kernel instantiation: the blocks run one at a time
#define __align__(n) __attribute__((aligned(n)))
#define CUDART_NAN (std::numeric_limits<double>::quiet_NaN())
using std::max;
using std::min;
using std::sqrt;

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

namespace hnrnn_emu {

constexpr size_t kMaxDynamicShared = 232448;  // a block's opt-in limit on sm_90 (H100 / H200)
constexpr int kMaxThreads = 1024;
constexpr size_t kGuardBytes = 4096;
constexpr unsigned char kGuardByte = 0xA5;
constexpr size_t kStackBytes = 256 * 1024;

struct ThreadState {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  ThreadState state;
  bool done = false;
};

struct Scheduler {
  ucontext_t main;
  std::vector<Fiber> fibers;  // reused across launches
  Fiber* running = nullptr;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> shared;  // the running block's dynamic shared memory, then the guard
  bool reverse_order = false;
};

inline Scheduler& scheduler() {
  static Scheduler s;
  return s;
}

inline const ThreadState& current() { return scheduler().running->state; }

inline void syncthreads() {
  Scheduler& s = scheduler();
  swapcontext(&s.running->context, &s.main);
}

inline void fiber_main() {
  Scheduler& s = scheduler();
  (*s.body)();
  s.running->done = true;  // returning resumes uc_link, the scheduler
}

inline void run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  if (threads < 1 || threads > kMaxThreads) {
    throw std::runtime_error("cuda emulation: invalid launch, " + std::to_string(threads) + " threads per block");
  }
  if (int64_t(grid.x) * grid.y * grid.z < 1) throw std::runtime_error("cuda emulation: invalid launch, empty grid");
  if (smem > kMaxDynamicShared) {
    throw std::runtime_error("cuda emulation: " + std::to_string(smem) +
                             " bytes of dynamic shared memory, more than a block can have");
  }
  Scheduler& s = scheduler();
  if (s.running != nullptr) throw std::runtime_error("cuda emulation: a launch from inside a kernel");
  while (s.fibers.size() < static_cast<size_t>(threads)) {
    s.fibers.emplace_back();
    s.fibers.back().stack.reset(new char[kStackBytes]);
  }
  s.body = &body;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        s.shared.assign(smem, 0xFF);  // NaN in every float type
        s.shared.resize(smem + kGuardBytes, kGuardByte);
        for (int64_t i = 0; i < threads; ++i) {
          Fiber& f = s.fibers[i];
          f.state = ThreadState{dim3(unsigned(i % block.x), unsigned(i / block.x % block.y),
                                     unsigned(i / (int64_t(block.x) * block.y))),
                                dim3(bx, by, bz), block, grid};
          f.done = false;
          getcontext(&f.context);
          f.context.uc_stack.ss_sp = f.stack.get();
          f.context.uc_stack.ss_size = kStackBytes;
          f.context.uc_link = &s.main;
          makecontext(&f.context, fiber_main, 0);
        }
        // Rounds: every live thread runs to its next barrier (or its end), in turn.
        for (bool waiting = true; waiting;) {
          waiting = false;
          for (int64_t k = 0; k < threads; ++k) {
            Fiber& f = s.fibers[s.reverse_order ? threads - 1 - k : k];
            if (f.done) continue;
            s.running = &f;
            swapcontext(&s.main, &f.context);
            s.running = nullptr;
            waiting = waiting || !f.done;
          }
        }
        for (size_t i = smem; i < s.shared.size(); ++i) {
          if (s.shared[i] != kGuardByte) {
            throw std::runtime_error("cuda emulation: a block wrote past its " + std::to_string(smem) +
                                     " bytes of dynamic shared memory (at byte " + std::to_string(i) + ")");
          }
        }
      }
  s.body = nullptr;
}

// A kernel function as pybind11 can take it: a TensorList argument (no caster) comes as a list.
template <typename T>
struct PyArg {
  using type = T;
};
template <>
struct PyArg<at::TensorList> {
  using type = std::vector<at::Tensor>;
};
template <typename R, typename... Args>
auto pythonic(R (*f)(Args...)) {
  return [f](typename PyArg<std::decay_t<Args>>::type... args) { return f(args...); };
}

// The ops a source registers (TORCH_LIBRARY_IMPL(hnrnn, ..., m) below), bound as functions of
// the Python module instead of dispatcher kernels.
struct Recorder {
  std::vector<std::string> names;
  std::vector<std::function<void(pybind11::module_&)>> bindings;
  template <typename F>
  Recorder& impl(const char* name, F f) {  // once per name (a source may register for CPU and CUDA)
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      names.emplace_back(name);
      bindings.emplace_back([name, f](pybind11::module_& m) { m.def(name, pythonic(f)); });
    }
    return *this;
  }
};

inline Recorder& recorder() {
  static Recorder r;
  return r;
}

}  // namespace hnrnn_emu

#define threadIdx (::hnrnn_emu::current().thread_idx)
#define blockIdx (::hnrnn_emu::current().block_idx)
#define blockDim (::hnrnn_emu::current().block_dim)
#define gridDim (::hnrnn_emu::current().grid_dim)
inline void __syncthreads() { ::hnrnn_emu::syncthreads(); }

#define HNRNN_EMU_CAT2(a, b) a##b
#define HNRNN_EMU_CAT(a, b) HNRNN_EMU_CAT2(a, b)
#define HNRNN_EMU_REGISTER HNRNN_EMU_CAT(hnrnn_emu_register_, __LINE__)
#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, key, m)                                                   \
  static void HNRNN_EMU_REGISTER(::hnrnn_emu::Recorder& m);                            \
  [[maybe_unused]] static const bool HNRNN_EMU_CAT(hnrnn_emu_registered_, __LINE__) = \
      (HNRNN_EMU_REGISTER(::hnrnn_emu::recorder()), true);                             \
  static void HNRNN_EMU_REGISTER(::hnrnn_emu::Recorder& m)

// ---------------------------------------------------------------- launch.h, emulated
namespace hnrnn::cuda {

using Stream = int;  // one stream: a launch has finished when it returns

struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};

inline Stream current_stream() { return 0; }

template <typename T>
inline T* dynamic_shared() {
  return reinterpret_cast<T*>(::hnrnn_emu::scheduler().shared.data());
}

inline int64_t max_dynamic_smem(int) { return ::hnrnn_emu::kMaxDynamicShared; }

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Stream, Args&&... args) {
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  ::hnrnn_emu::run_grid(grid, block, smem, [&] { std::apply(kernel, params); });
}

}  // namespace hnrnn::cuda
