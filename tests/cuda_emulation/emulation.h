#pragma once
// Runs hnrnn's CUDA kernels on the CPU, for the tests (tests/test_cuda_emulated.py): the CUDA
// sources are compiled as C++ against this header, which stands in for what they take from the
// CUDA runtime (csrc/cuda/launch.h and the CUDA keywords).
//
// Each GPU thread is a fiber (ucontext) on its own stack; __syncthreads() switches back to the
// scheduler, which resumes the threads of the block in turn, so every thread reaches the
// barrier before any passes it. A plain launch runs its blocks one after another. A cooperative
// launch (launch_cooperative) starts all its blocks, each with its own shared memory, and runs
// them one after another from one grid_sync() to the next: a block that reads what another
// writes without a grid barrier between them then sees a different value in the two orders.
// What that makes testable:
//  * the kernels' indexing, barriers, carve-outs of shared memory and choice of path, run for
//    real on CPU tensors and compared with the CPU kernels;
//  * missing barriers: the threads of a block, and the blocks of a cooperative launch, can run
//    in reverse order between barriers (set_thread_order), and a race then changes the result;
//    threads that disagree on grid barriers (some wait there while others finished or wait at
//    __syncthreads) fail the launch, as they would hang the device;
//  * shared memory: the dynamic shared memory starts as NaN (0xFF bytes) and is followed by a
//    guard that must be intact after each block; a launch asking for more than a block can have
//    (227 KiB on H100 / H200), more than 1024 threads, or a cooperative grid larger than the
//    device holds at once, fails as it would on the device. The device's SM count and shared
//    memory can be set lower (set_device_limits), so that small problems take the paths of
//    large ones.
// Not modelled: warps (the kernels use no warp-level primitives), the memory model, and the
// device's math library (the host paths of rnn_math.h run instead). Static __shared__ arrays
// are one instance for all blocks: the cooperative kernels use dynamic shared memory only.
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
constexpr int64_t kSmCount = 132;             // H200 (H100 SXM: 132 too)
constexpr int kMaxThreads = 1024;
constexpr int kMaxThreadsPerSm = 2048;
constexpr size_t kGuardBytes = 4096;
constexpr unsigned char kGuardByte = 0xA5;
constexpr size_t kStackBytes = 256 * 1024;

struct ThreadState {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};

// Where a fiber stopped: running (or ready to), at __syncthreads, at grid_sync, finished.
enum class Wait { kNone, kBlock, kGrid, kDone };

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  ThreadState state;
  unsigned char* shared = nullptr;  // its block's dynamic shared memory
  Wait wait = Wait::kNone;
};

struct Scheduler {
  ucontext_t main;
  std::vector<Fiber> fibers;  // reused across launches
  Fiber* running = nullptr;
  const std::function<void()>* body = nullptr;
  std::vector<std::vector<unsigned char>> shared;  // per live block: its dynamic shared memory, then the guard
  bool reverse_order = false;
  int64_t sm_count = kSmCount;  // the emulated device (set_device_limits)
  size_t max_shared = kMaxDynamicShared;
  int64_t launches = 0, cooperative_launches = 0;
};

inline Scheduler& scheduler() {
  static Scheduler s;
  return s;
}

inline const ThreadState& current() { return scheduler().running->state; }

inline void yield(Wait why) {
  Scheduler& s = scheduler();
  s.running->wait = why;
  swapcontext(&s.running->context, &s.main);
}

inline void syncthreads() { yield(Wait::kBlock); }
inline void grid_sync() { yield(Wait::kGrid); }

inline void fiber_main() {
  Scheduler& s = scheduler();
  (*s.body)();
  s.running->wait = Wait::kDone;  // returning resumes uc_link, the scheduler
}

// Blocks of `threads` threads and `smem` bytes that fit on the emulated device at once.
inline int64_t co_resident(int64_t threads, size_t smem) {
  const Scheduler& s = scheduler();
  const int64_t by_threads = kMaxThreadsPerSm / threads;
  const int64_t by_shared = smem == 0 ? by_threads : static_cast<int64_t>(s.max_shared / smem);
  return std::min(by_threads, by_shared) * s.sm_count;
}

inline void start_block(Fiber* threads, int64_t n, dim3 block_idx, dim3 block, dim3 grid, unsigned char* shared) {
  Scheduler& s = scheduler();
  for (int64_t i = 0; i < n; ++i) {
    Fiber& f = threads[i];
    f.state = ThreadState{dim3(unsigned(i % block.x), unsigned(i / block.x % block.y),
                               unsigned(i / (int64_t(block.x) * block.y))),
                          block_idx, block, grid};
    f.shared = shared;
    f.wait = Wait::kNone;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &s.main;
    makecontext(&f.context, fiber_main, 0);
  }
}

// Runs one block's threads in rounds (each live thread to its next barrier, in turn) until each
// has finished or waits at the grid barrier.
inline void run_block(Fiber* threads, int64_t n, int64_t block) {
  Scheduler& s = scheduler();
  for (bool again = true; again;) {
    again = false;
    bool at_grid = false;
    for (int64_t k = 0; k < n; ++k) {
      Fiber& f = threads[s.reverse_order ? n - 1 - k : k];
      if (f.wait == Wait::kDone || f.wait == Wait::kGrid) {
        at_grid = at_grid || f.wait == Wait::kGrid;
        continue;
      }
      f.wait = Wait::kNone;
      s.running = &f;
      swapcontext(&s.main, &f.context);
      s.running = nullptr;
      again = again || f.wait == Wait::kBlock;
      at_grid = at_grid || f.wait == Wait::kGrid;
    }
    if (again && at_grid) {
      throw std::runtime_error("cuda emulation: in block " + std::to_string(block) +
                               ", threads wait at __syncthreads() while others wait at the grid barrier");
    }
  }
  int64_t at_grid = 0;
  for (int64_t k = 0; k < n; ++k) at_grid += threads[k].wait == Wait::kGrid;
  if (at_grid != 0 && at_grid != n) {
    throw std::runtime_error("cuda emulation: in block " + std::to_string(block) +
                             ", some threads finished while others wait at the grid barrier");
  }
}

inline void check_guard(const std::vector<unsigned char>& shared, size_t smem) {
  for (size_t i = smem; i < shared.size(); ++i) {
    if (shared[i] != kGuardByte) {
      throw std::runtime_error("cuda emulation: a block wrote past its " + std::to_string(smem) +
                               " bytes of dynamic shared memory (at byte " + std::to_string(i) + ")");
    }
  }
}

inline void run_grid(dim3 grid, dim3 block, size_t smem, bool cooperative, const std::function<void()>& body) {
  Scheduler& s = scheduler();
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  if (threads < 1 || threads > kMaxThreads) {
    throw std::runtime_error("cuda emulation: invalid launch, " + std::to_string(threads) + " threads per block");
  }
  if (blocks < 1) throw std::runtime_error("cuda emulation: invalid launch, empty grid");
  if (smem > s.max_shared) {
    throw std::runtime_error("cuda emulation: " + std::to_string(smem) +
                             " bytes of dynamic shared memory, more than a block can have");
  }
  if (cooperative && blocks > co_resident(threads, smem)) {
    throw std::runtime_error("cuda emulation: a cooperative launch of " + std::to_string(blocks) +
                             " blocks, more than the device runs at once (" +
                             std::to_string(co_resident(threads, smem)) + ")");
  }
  if (s.running != nullptr) throw std::runtime_error("cuda emulation: a launch from inside a kernel");
  ++(cooperative ? s.cooperative_launches : s.launches);
  const int64_t live = cooperative ? blocks : 1;  // blocks started at once
  while (s.fibers.size() < static_cast<size_t>(live * threads)) {
    s.fibers.emplace_back();
    s.fibers.back().stack.reset(new char[kStackBytes]);
  }
  s.shared.resize(std::max<size_t>(s.shared.size(), live));
  auto fresh_shared = [&](int64_t slot) {  // NaN in every float type, then the guard
    s.shared[slot].assign(smem, 0xFF);
    s.shared[slot].resize(smem + kGuardBytes, kGuardByte);
    return s.shared[slot].data();
  };
  auto block_idx = [&](int64_t b) {
    return dim3(unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (int64_t(grid.x) * grid.y)));
  };
  s.body = &body;
  if (!cooperative) {
    for (int64_t b = 0; b < blocks; ++b) {
      start_block(s.fibers.data(), threads, block_idx(b), block, grid, fresh_shared(0));
      run_block(s.fibers.data(), threads, b);
      if (s.fibers[0].wait == Wait::kGrid) {
        throw std::runtime_error("cuda emulation: grid_sync() in a launch that is not cooperative");
      }
      check_guard(s.shared[0], smem);
    }
  } else {
    for (int64_t b = 0; b < blocks; ++b) {
      start_block(s.fibers.data() + b * threads, threads, block_idx(b), block, grid, fresh_shared(b));
    }
    // Phases: each block in turn runs to the grid barrier (or its end); then all pass it.
    for (bool waiting = true; waiting;) {
      int64_t at_grid = 0;
      for (int64_t k = 0; k < blocks; ++k) {
        const int64_t b = s.reverse_order ? blocks - 1 - k : k;
        run_block(s.fibers.data() + b * threads, threads, b);
        at_grid += s.fibers[b * threads].wait == Wait::kGrid;
      }
      if (at_grid != 0 && at_grid != blocks) {
        throw std::runtime_error("cuda emulation: " + std::to_string(at_grid) + " of " + std::to_string(blocks) +
                                 " blocks wait at the grid barrier while the others finished");
      }
      waiting = at_grid == blocks;
      for (int64_t i = 0; waiting && i < blocks * threads; ++i) s.fibers[i].wait = Wait::kNone;
    }
    for (int64_t b = 0; b < blocks; ++b) check_guard(s.shared[b], smem);
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
  return reinterpret_cast<T*>(::hnrnn_emu::scheduler().running->shared);
}

inline int64_t max_dynamic_smem(int) { return static_cast<int64_t>(::hnrnn_emu::scheduler().max_shared); }
inline int64_t sm_count(int) { return ::hnrnn_emu::scheduler().sm_count; }

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Stream, Args&&... args) {
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  ::hnrnn_emu::run_grid(grid, block, smem, false, [&] { std::apply(kernel, params); });
}

template <typename... Params>
int64_t co_resident_blocks(void (*)(Params...), int threads, size_t smem, int) {
  return ::hnrnn_emu::co_resident(threads, smem);
}

template <typename... Params, typename... Args>
void launch_cooperative(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Stream, Args&&... args) {
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  ::hnrnn_emu::run_grid(grid, block, smem, true, [&] { std::apply(kernel, params); });
}

inline void grid_sync() { ::hnrnn_emu::grid_sync(); }

template <typename T>
inline T load_from_grid(const T* p) {
  return *p;
}

}  // namespace hnrnn::cuda
