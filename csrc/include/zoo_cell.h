#pragma once
// Elementwise math of the zoo cell, shared by the CPU and CUDA kernels.
//
//   x_t   = h_{t-1} + E[ids_t]
//   r_t   = ReLU(x_t W^T + b)
//   out_t = (r_t - mean_t) * invstd_t * gamma + beta      (BatchNorm1d over the batch; computed as
//           r_t * scale + shift, the form of torch's CPU kernel)
//   h_t   = out_t (norm_state) or r_t
#include "common.h"

namespace hnrnn {
namespace zoo {

template <typename T>
HNRNN_HOST_DEVICE inline T relu(T z) { return z < T(0) ? T(0) : z; }  // NaN stays NaN, as torch.relu

// In the form of torch's CPU batch norm, r * scale + shift, so that inf / NaN statistics or
// parameters give NaN where nn.BatchNorm1d's do.
template <typename T>
HNRNN_HOST_DEVICE inline T bn_apply(T r, T mean, T invstd, T gamma, T beta) {
  const T scale = invstd * gamma;
  return r * scale + (beta - mean * scale);
}

// nn.BatchNorm1d's running update: (1 - momentum) * old + momentum * batch value.
template <typename T>
HNRNN_HOST_DEVICE inline T running_update(T old, T batch, T momentum) {
  return (T(1) - momentum) * old + momentum * batch;
}

// Gradient w.r.t. the pre-activation z of one element, through BatchNorm and ReLU.
//   g_out:       total gradient reaching out_t (output grad + carried state grad when norm_state)
//   g_r_direct:  gradient reaching r_t directly (the carried state grad when !norm_state)
//   sum_g, sum_g_xhat: sums over the batch of g_out and g_out * xhat for this feature (training only)
// Training: d xhat = gamma * g; dr = invstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
// Eval: mean/invstd are constants.  ReLU passes the gradient where r > 0 (as torch's threshold_backward).
template <typename T>
HNRNN_HOST_DEVICE inline T bn_relu_backward(T g_out, T g_r_direct, T r, T mean, T invstd, T gamma,
                                            T sum_g, T sum_g_xhat, T inv_n, bool training) {
  T g;
  if (training) {
    T xhat = (r - mean) * invstd;
    g = gamma * invstd * (g_out - inv_n * sum_g - xhat * (inv_n * sum_g_xhat));
  } else {
    g = gamma * invstd * g_out;
  }
  g += g_r_direct;
  return r <= T(0) ? T(0) : g;  // torch's threshold_backward: NaN r passes g
}

}  // namespace zoo
}  // namespace hnrnn
