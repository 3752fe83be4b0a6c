// Register-blocked small GEMM (see small_gemm.h).
#include "small_gemm.h"

#include "cpu_common.h"

namespace hnrnn {
namespace cpu {
namespace {

// One MR x NR block of C: the accumulators stay in registers (fixed trip counts, so the
// compiler unrolls the row loop and vectorises the column loop) while k runs over B's rows.
template <typename T, int MR, int NR>
HNRNN_INLINE void block(int64_t K, const T* A, int64_t a_row, int64_t a_col, const T* B, int64_t ldb,
                        T* C, int64_t ldc, bool accumulate) {
  T acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = accumulate ? C[r * ldc + j] : T(0);
  for (int64_t k = 0; k < K; ++k) {
    const T* __restrict__ b = B + k * ldb;
    for (int r = 0; r < MR; ++r) {
      const T a = A[r * a_row + k * a_col];
      for (int j = 0; j < NR; ++j) acc[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) C[r * ldc + j] = acc[r][j];
}

// The last n < 8 columns: runtime width, same summation order.
template <typename T, int MR>
HNRNN_INLINE void narrow_block(int64_t n, int64_t K, const T* A, int64_t a_row, int64_t a_col, const T* B,
                               int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  T acc[MR][8];
  for (int r = 0; r < MR; ++r)
    for (int64_t j = 0; j < n; ++j) acc[r][j] = accumulate ? C[r * ldc + j] : T(0);
  for (int64_t k = 0; k < K; ++k) {
    const T* b = B + k * ldb;
    for (int r = 0; r < MR; ++r) {
      const T a = A[r * a_row + k * a_col];
      for (int64_t j = 0; j < n; ++j) acc[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int64_t j = 0; j < n; ++j) C[r * ldc + j] = acc[r][j];
}

template <typename T, int MR>
HNRNN_INLINE void row_block(int64_t N, int64_t K, const T* A, int64_t a_row, int64_t a_col, const T* B,
                            int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  int64_t j = 0;
  for (; j + 32 <= N; j += 32) block<T, MR, 32>(K, A, a_row, a_col, B + j, ldb, C + j, ldc, accumulate);
  for (; j + 8 <= N; j += 8) block<T, MR, 8>(K, A, a_row, a_col, B + j, ldb, C + j, ldc, accumulate);
  if (j < N) narrow_block<T, MR>(N - j, K, A, a_row, a_col, B + j, ldb, C + j, ldc, accumulate);
}

template <typename T>
HNRNN_INLINE void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_row, int64_t a_col, const T* B,
                       int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) row_block<T, 4>(N, K, A + m * a_row, a_row, a_col, B, ldb, C + m * ldc, ldc, accumulate);
  const T* Am = A + m * a_row;
  T* Cm = C + m * ldc;
  switch (M - m) {
    case 3: row_block<T, 3>(N, K, Am, a_row, a_col, B, ldb, Cm, ldc, accumulate); break;
    case 2: row_block<T, 2>(N, K, Am, a_row, a_col, B, ldb, Cm, ldc, accumulate); break;
    case 1: row_block<T, 1>(N, K, Am, a_row, a_col, B, ldb, Cm, ldc, accumulate); break;
    default: break;
  }
}

}  // namespace

// float goes through the vectorised clones; double serves the float64 tests and gradcheck.
HNRNN_CPU_CLONES void small_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_row, int64_t a_col,
                const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  gemm<float>(M, N, K, A, a_row, a_col, B, ldb, C, ldc, accumulate);
}

void small_gemm(int64_t M, int64_t N, int64_t K, const double* A, int64_t a_row, int64_t a_col,
                const double* B, int64_t ldb, double* C, int64_t ldc, bool accumulate) {
  gemm<double>(M, N, K, A, a_row, a_col, B, ldb, C, ldc, accumulate);
}

}  // namespace cpu
}  // namespace hnrnn
