#pragma once
// Pointwise gate math of the GRU and vanilla-RNN recurrences, shared by the CPU (.cpp)
// and CUDA (.cu) kernels so that both compute exactly the same formulas.
//
// PyTorch's GRU (gate order r, z, n):
//   r = s(gx_r + gh_r)        gh_* = W_h* h_prev + b_h*
//   z = s(gx_z + gh_z)
//   n = tanh(gx_n + r * gh_n)
//   h = (1 - z) * n + z * h_prev
// Vanilla RNN: h = act(gx + gh), act = tanh or relu.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"

namespace hnrnn {

// exp for float on the host: Cephes-style range reduction + degree-6 polynomial, written
// branch-free (clamps, float->int conversion, exponent bit-building) so that GCC can
// auto-vectorise the pointwise loops that call it. Relative error about 2 ulp.
// On the device, and for double, the library exp is used.
HNRNN_HOST_DEVICE inline float exp_approx_host(float x) {
  // NaN passes these clamps (a comparison with NaN is false). Above ln(FLT_MAX) ~ 88.72 the
  // exponent below reaches 128 and the result is inf, as expf's: sigmoid(-inf) must be 0.
  x = x > 89.f ? 89.f : x;
  x = x < -87.3365447505531f ? -87.3365447505531f : x;
  // n = round(x / ln2), r = x - n*ln2 (ln2 split in two for accuracy)
  float fx = x * 1.44269504088896341f;
  fx = fx + (fx >= 0.f ? 0.5f : -0.5f);
  // Truncation after +-0.5 = round half away from zero. A NaN becomes 128 here (so the
  // conversion is defined) and stays NaN in p below.
  int32_t n = static_cast<int32_t>(fx < 128.f ? fx : 128.f);
  float fn = static_cast<float>(n);
  float r = x - fn * 0.693359375f;
  r = r - fn * (-2.12194440e-4f);
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  // 2^n by building the exponent bits; n in [-126, 128] after the clamps above (128: inf).
  int32_t bits = (n + 127) << 23;
  float pow2n;
  std::memcpy(&pow2n, &bits, sizeof(float));
  return p * pow2n;
}

HNRNN_HOST_DEVICE inline float exp_(float x) {
#ifdef __CUDA_ARCH__
  return expf(x);
#else
  return exp_approx_host(x);
#endif
}
HNRNN_HOST_DEVICE inline double exp_(double x) { return exp(x); }

template <typename T>
HNRNN_HOST_DEVICE inline T sigmoid_(T x) {
  return T(1) / (T(1) + exp_(-x));
}

// tanh(x) = 1 - 2 / (exp(2x) + 1): saturates correctly at both ends; absolute error
// about 1 ulp of 1 in float. Double uses the library tanh.
HNRNN_HOST_DEVICE inline float tanh_(float x) {
#ifdef __CUDA_ARCH__
  return tanhf(x);
#else
  return 1.f - 2.f / (exp_approx_host(2.f * x) + 1.f);
#endif
}
HNRNN_HOST_DEVICE inline double tanh_(double x) { return tanh(x); }

// ---- GRU ----
// Forward of one unit: from input gates (gx_*) and recurrent gates (gh_* incl. b_hh)
// compute r, z, n and the new state. gh_n is kept by the caller for backward.
template <typename T>
struct GruGates {
  T r, z, n, h;
};

template <typename T>
HNRNN_HOST_DEVICE inline GruGates<T> gru_forward(T gx_r, T gx_z, T gx_n, T gh_r, T gh_z, T gh_n,
                                                 T h_prev) {
  GruGates<T> g;
  g.r = sigmoid_(gx_r + gh_r);
  g.z = sigmoid_(gx_z + gh_z);
  g.n = tanh_(gx_n + g.r * gh_n);
  g.h = (T(1) - g.z) * g.n + g.z * h_prev;
  return g;
}

// Backward of one unit. dh: total gradient reaching h_t (from the output and from step t+1).
// Writes the pre-activation gradients of the input gates (d_r, d_z, d_n) and of the
// recurrent n-gate (d_hn, the gradient of W_hn h + b_hn), and the direct part of the
// gradient of h_prev (dh * z); the W_hh^T part is added by the caller's GEMM.
template <typename T>
struct GruGrads {
  T d_r, d_z, d_n, d_hn, dh_prev;
};

template <typename T>
HNRNN_HOST_DEVICE inline GruGrads<T> gru_backward(T dh, T r, T z, T n, T gh_n, T h_prev) {
  GruGrads<T> g;
  T dn = dh * (T(1) - z);
  T dz = dh * (h_prev - n);
  g.d_n = dn * (T(1) - n * n);
  g.d_hn = g.d_n * r;
  T dr = g.d_n * gh_n;
  g.d_r = dr * r * (T(1) - r);
  g.d_z = dz * z * (T(1) - z);
  g.dh_prev = dh * z;
  return g;
}

// ---- vanilla RNN ----
template <typename T>
HNRNN_HOST_DEVICE inline T rnn_forward(T pre, bool relu) {
  return relu ? (pre < T(0) ? T(0) : pre) : tanh_(pre);  // NaN stays NaN, as torch.relu
}

// Gradient of the pre-activation from the gradient of h and h itself.
template <typename T>
HNRNN_HOST_DEVICE inline T rnn_backward(T dh, T h, bool relu) {
  // relu: torch's threshold_backward (h <= 0 ? 0 : dh), which passes dh where h is NaN
  return relu ? (h <= T(0) ? T(0) : dh) : dh * (T(1) - h * h);
}

}  // namespace hnrnn
