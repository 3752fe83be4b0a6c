#pragma once
// Single-threaded GEMM for the small matrices of a recurrence step (a batch of rows times a
// 64..1024-wide weight), called inside the time loops of the CPU kernels.
//
// BLAS is slower than it should be here: at these sizes a call costs more in its threading
// (OpenMP wake-up and barrier) and dispatch than in arithmetic, and the time loops call it
// once per step. This kernel keeps a 4-row x 32-column block of C in registers while it
// streams the rows of B, and runs in the calling thread (the callers split the batch across
// threads themselves). Deterministic: each C element is summed over k in order.
#include <cstdint>

namespace hnrnn {
namespace cpu {

// C (M x N, row stride ldc) = A B, or C += A B when accumulate.
// A (M x K) is read at A[m * a_row + k * a_col], so a transposed A is a stride swap;
// B (K x N) is row-major with row stride ldb.
void small_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_row, int64_t a_col,
                const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);
void small_gemm(int64_t M, int64_t N, int64_t K, const double* A, int64_t a_row, int64_t a_col,
                const double* B, int64_t ldb, double* C, int64_t ldc, bool accumulate);

}  // namespace cpu
}  // namespace hnrnn
