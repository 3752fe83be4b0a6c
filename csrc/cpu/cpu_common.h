#pragma once
// Compiler attributes shared by the CPU kernels.
//
// The extension is built with generic x86-64 flags (it must load on any machine), so the
// float hot loops are compiled for AVX-512 / AVX2+FMA / baseline and the loader picks one
// (target_clones, an ifunc). The helpers those loops call are always_inline so that they are
// compiled inside each clone, for its vector width.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HNRNN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HNRNN_CPU_CLONES
#endif
#if defined(__GNUC__)
#define HNRNN_INLINE inline __attribute__((always_inline))
#else
#define HNRNN_INLINE inline
#endif

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace hnrnn {
namespace cpu {

// Batch rows are split across threads in blocks of this many rows. Kernels that sum over the
// batch keep one partial sum per block and add the blocks in order, so their results do not
// depend on the thread count.
constexpr int64_t kRowsPerTask = 16;

// Runs fn(thread, threads) on a team of up to `want` threads that can meet at team_barrier().
// With one thread, inside another parallel region, or without OpenMP, fn(0, 1) runs here.
template <typename F>
void run_team(int64_t want, const F& fn) {
#ifdef _OPENMP
  const int64_t n = std::min<int64_t>(want, at::get_num_threads());
  if (n > 1 && !at::in_parallel_region()) {
#pragma omp parallel num_threads(static_cast<int>(n))
    fn(static_cast<int64_t>(omp_get_thread_num()), static_cast<int64_t>(omp_get_num_threads()));
    return;
  }
#endif
  fn(int64_t(0), int64_t(1));
}

// Waits for the whole team of run_team (a no-op for a team of one).
inline void team_barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

}  // namespace cpu
}  // namespace hnrnn
