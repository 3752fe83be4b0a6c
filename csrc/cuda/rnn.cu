// CUDA kernels of the GRU / vanilla-RNN recurrences (one layer, one direction).
//
// Three paths per layer, same results and the same workspace layout as the CPU kernels
// (csrc/cpu/rnn.cpp), and a fourth for whole stacks:
//  * persistent: when W_hh fits in one SM's shared memory (H up to ~128 in fp32 on H100),
//    one launch runs the whole time loop. Each block owns kRows batch rows, loads W_hh into
//    shared memory once and keeps its state there; per step: the recurrent mat-vec from
//    shared memory, then the fused gate math. Backward likewise keeps dh on chip and only
//    does dh_prev = dh * z + dG_h W_hh per step.
//  * grid: past one SM, while a step's work per block stays small (grid_plan), one cooperative
//    launch whose blocks each hold a slice of W_hh, with a grid barrier per step.
//  * per step: otherwise, one cuBLAS GEMM (at::mm_out / addmm_) plus one fused pointwise
//    kernel per step.
//  * stacked: every layer of a unidirectional stack in one persistent launch, a wavefront over
//    the layers, forward and backward (stack_fwd_kernel, stack_bwd_kernel; csrc/rnn_network.cpp
//    uses them when all the weights fit one SM).
// fp32 / fp64, and fp16 / bf16 with fp32 state and accumulation (at::opmath_type).
// Gate math: rnn_math.h, shared with the CPU kernels.
#include <torch/extension.h>

#include <ATen/OpMathType.h>

#include <cstdlib>
#include <string>
#include <utility>

#include "../op_checks.h"
#include "../rnn_dispatch.h"
#include "launch.h"
#include "rnn_math.h"

namespace hnrnn {
namespace {

constexpr int kThreads = 256;
constexpr int kRows = 8;  // batch rows per block in the persistent kernels

// ---------------------------------------------------------------- per-element gate math
// Forward of unit j of one batch row; returns the new state. Masked (inactive) rows output
// 0, keep the state and leave zeros / the state in the workspace (ws null: none is saved).
template <bool GRU, bool RELU, typename acc_t, typename scalar_t, typename gx_t>
__device__ __forceinline__ acc_t fwd_element(bool active, int64_t H, int64_t j, const gx_t* gx,
                                             const acc_t* gh, const scalar_t* bias, acc_t hp,
                                             scalar_t* out, scalar_t* ws) {
  if (GRU) {
    const acc_t bh_r = bias ? acc_t(bias[j]) : acc_t(0);
    const acc_t bh_z = bias ? acc_t(bias[H + j]) : acc_t(0);
    const acc_t bh_n = bias ? acc_t(bias[2 * H + j]) : acc_t(0);
    const acc_t gh_n = gh[2 * H + j] + bh_n;
    if (!active) {
      if (ws) {
        ws[j] = ws[H + j] = ws[2 * H + j] = ws[3 * H + j] = scalar_t(0);
        ws[4 * H + j] = scalar_t(hp);
      }
      out[j] = scalar_t(0);
      return hp;
    }
    GruGates<acc_t> g = gru_forward<acc_t>(acc_t(gx[j]), acc_t(gx[H + j]), acc_t(gx[2 * H + j]),
                                           gh[j] + bh_r, gh[H + j] + bh_z, gh_n, hp);
    if (ws) {
      ws[j] = scalar_t(g.r);
      ws[H + j] = scalar_t(g.z);
      ws[2 * H + j] = scalar_t(g.n);
      ws[3 * H + j] = scalar_t(gh_n);
      ws[4 * H + j] = scalar_t(hp);
    }
    out[j] = scalar_t(g.h);
    return g.h;
  } else {
    if (!active) {
      if (ws) ws[j] = scalar_t(0);
      out[j] = scalar_t(0);
      return hp;
    }
    const acc_t pre = acc_t(gx[j]) + gh[j] + (bias ? acc_t(bias[j]) : acc_t(0));
    const acc_t h = rnn_forward<acc_t>(pre, RELU);
    if (ws) ws[j] = scalar_t(h);
    out[j] = scalar_t(h);
    return h;
  }
}

// Backward of unit j of one batch row. dh: the gradient carried from step t+1. Writes the
// gate gradients (dgx: input gates, dgh: recurrent gates; the same tensor for the RNN) and
// returns the direct part of dh_prev (the W_hh^T part is added by the caller).
template <bool GRU, bool RELU, typename acc_t, typename scalar_t, typename go_t>
__device__ __forceinline__ acc_t bwd_element(bool active, int64_t H, int64_t j, acc_t dh, const go_t* go,
                                             const scalar_t* ws, scalar_t* dgx, scalar_t* dgh, acc_t* dgh_acc) {
  if (GRU) {
    if (!active) {
      dgx[j] = dgx[H + j] = dgx[2 * H + j] = scalar_t(0);
      dgh[j] = dgh[H + j] = dgh[2 * H + j] = scalar_t(0);
      dgh_acc[0] = dgh_acc[1] = dgh_acc[2] = acc_t(0);
      return dh;
    }
    const acc_t d = dh + acc_t(go[j]);
    GruGrads<acc_t> g = gru_backward<acc_t>(d, acc_t(ws[j]), acc_t(ws[H + j]), acc_t(ws[2 * H + j]),
                                            acc_t(ws[3 * H + j]), acc_t(ws[4 * H + j]));
    dgx[j] = scalar_t(g.d_r);
    dgx[H + j] = scalar_t(g.d_z);
    dgx[2 * H + j] = scalar_t(g.d_n);
    dgh[j] = scalar_t(g.d_r);
    dgh[H + j] = scalar_t(g.d_z);
    dgh[2 * H + j] = scalar_t(g.d_hn);
    dgh_acc[0] = g.d_r;
    dgh_acc[1] = g.d_z;
    dgh_acc[2] = g.d_hn;
    return g.dh_prev;
  } else {
    if (!active) {
      dgx[j] = scalar_t(0);
      dgh_acc[0] = acc_t(0);
      return dh;
    }
    const acc_t g = rnn_backward<acc_t>(dh + acc_t(go[j]), acc_t(ws[j]), RELU);
    dgx[j] = scalar_t(g);
    dgh_acc[0] = g;
    return acc_t(0);
  }
}

__device__ __forceinline__ bool is_active(const int64_t* len, int64_t b, int64_t t) {
  return len == nullptr || t < len[b];
}

// fwd_element / bwd_element for one unit whose recurrent gate sums (gh_v) or gate gradients
// (g3) are not laid out as (G, H) rows: its entries gathered into compact vectors (H' = 1,
// j' = 0), the results scattered back. gx, bias, out, ws, go, dgx, dgh: as fwd_element's.
template <bool GRU, bool RELU, typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t unit_forward(bool active, int64_t H, int64_t j, const scalar_t* gx,
                                              const acc_t* gh_v, const scalar_t* bias, acc_t hp, scalar_t* out,
                                              scalar_t* ws) {
  constexpr int G = GRU ? 3 : 1;
  constexpr int W = ws_width(GRU);
  scalar_t gx_v[3], b_v[3], ws_v[5], out_v;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    gx_v[g] = gx[g * H + j];
    b_v[g] = bias ? bias[g * H + j] : scalar_t(0);
  }
  const acc_t h = fwd_element<GRU, RELU, acc_t, scalar_t>(active, 1, 0, gx_v, gh_v, b_v, hp, &out_v, ws_v);
  if (ws) {
#pragma unroll
    for (int k = 0; k < W; ++k) ws[k * H + j] = ws_v[k];
  }
  out[j] = out_v;
  return h;
}

template <bool GRU, bool RELU, typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t unit_backward(bool active, int64_t H, int64_t j, acc_t dh, const scalar_t* go,
                                               const scalar_t* ws, scalar_t* dgx, scalar_t* dgh, acc_t* g3) {
  constexpr int G = GRU ? 3 : 1;
  constexpr int W = ws_width(GRU);
  scalar_t ws_v[W], dgx_v[3], dgh_v[3], go_v = go[j];
#pragma unroll
  for (int k = 0; k < W; ++k) ws_v[k] = ws[k * H + j];
  const acc_t d = bwd_element<GRU, RELU, acc_t, scalar_t>(active, 1, 0, dh, &go_v, ws_v, dgx_v, dgh_v, g3);
#pragma unroll
  for (int g = 0; g < G; ++g) {
    dgx[g * H + j] = dgx_v[g];
    if (GRU) dgh[g * H + j] = dgh_v[g];
  }
  return d;
}

// ---------------------------------------------------------------- persistent kernels
template <bool GRU, bool RELU, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
persistent_fwd_kernel(int64_t T, int64_t B, int64_t H, bool reverse, const int64_t* __restrict__ len,
                      const scalar_t* __restrict__ gx, const scalar_t* __restrict__ h0,
                      const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
                      scalar_t* __restrict__ out, scalar_t* __restrict__ h_n, scalar_t* __restrict__ ws) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = GRU ? 3 : 1;
  const int64_t GH = G * H;
  acc_t* h_s = cuda::dynamic_shared<acc_t>();               // [kRows][H] state
  acc_t* gh_s = h_s + kRows * H;                                  // [kRows][GH] recurrent gates
  // W transposed, rows padded to GH + 1 so that the copy below (consecutive k) hits distinct banks:
  // wt_s[k * (GH + 1) + row] = W[row][k]
  scalar_t* wt_s = reinterpret_cast<scalar_t*>(gh_s + kRows * GH);
  const int64_t GHp = GH + 1;
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t nb = B - b0 < kRows ? B - b0 : kRows;

  for (int64_t i = threadIdx.x; i < GH * H; i += blockDim.x) {
    const int64_t row = i / H, k = i % H;
    wt_s[k * GHp + row] = w[i];
  }
  for (int64_t i = threadIdx.x; i < kRows * H; i += blockDim.x) {
    const int64_t b = i / H;
    h_s[i] = b < nb ? acc_t(h0[(b0 + b) * H + i % H]) : acc_t(0);
  }
  __syncthreads();

  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    // gh[b][row] = sum_k W[row][k] h[b][k]: consecutive threads read consecutive rows of wt_s
    for (int64_t row = threadIdx.x; row < GH; row += blockDim.x) {
      acc_t acc[kRows];
#pragma unroll
      for (int b = 0; b < kRows; ++b) acc[b] = acc_t(0);
      for (int64_t k = 0; k < H; ++k) {
        const acc_t wv = acc_t(wt_s[k * GHp + row]);
#pragma unroll
        for (int b = 0; b < kRows; ++b) acc[b] += wv * h_s[b * H + k];
      }
#pragma unroll
      for (int b = 0; b < kRows; ++b) gh_s[b * GH + row] = acc[b];
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < nb * H; i += blockDim.x) {
      const int64_t b = i / H, j = i % H, gb = b0 + b;
      const int64_t r = t * B + gb;
      h_s[i] = fwd_element<GRU, RELU, acc_t, scalar_t>(is_active(len, gb, t), H, j, gx + r * GH, gh_s + b * GH,
                                                       bias, h_s[i], out + r * H, ws_at(ws, r * ws_width(GRU) * H));
    }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < nb * H; i += blockDim.x) h_n[b0 * H + i] = scalar_t(h_s[i]);
}

template <bool GRU, bool RELU, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
persistent_bwd_kernel(int64_t T, int64_t B, int64_t H, bool reverse, const int64_t* __restrict__ len,
                      const scalar_t* __restrict__ go, const scalar_t* __restrict__ g_hn,
                      const scalar_t* __restrict__ ws, const scalar_t* __restrict__ w,
                      scalar_t* __restrict__ dgx, scalar_t* __restrict__ dgh, scalar_t* __restrict__ dh0) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = GRU ? 3 : 1;
  const int64_t GH = G * H;
  acc_t* dh_s = cuda::dynamic_shared<acc_t>();         // [kRows][H] carried gradient
  acc_t* dpd_s = dh_s + kRows * H;                      // [kRows][H] direct part of dh_prev
  acc_t* dgh_s = dpd_s + kRows * H;                     // [kRows][GH] recurrent gate gradients
  scalar_t* w_s = reinterpret_cast<scalar_t*>(dgh_s + kRows * GH);  // [GH][H] = W as is
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t nb = B - b0 < kRows ? B - b0 : kRows;

  for (int64_t i = threadIdx.x; i < GH * H; i += blockDim.x) w_s[i] = w[i];
  for (int64_t i = threadIdx.x; i < kRows * GH; i += blockDim.x) dgh_s[i] = acc_t(0);
  for (int64_t i = threadIdx.x; i < kRows * H; i += blockDim.x) {
    const int64_t b = i / H;
    dh_s[i] = b < nb ? acc_t(g_hn[(b0 + b) * H + i % H]) : acc_t(0);
  }
  __syncthreads();

  for (int64_t s = T - 1; s >= 0; --s) {  // the forward order, reversed
    const int64_t t = reverse ? T - 1 - s : s;
    for (int64_t i = threadIdx.x; i < nb * H; i += blockDim.x) {
      const int64_t b = i / H, j = i % H, gb = b0 + b;
      const int64_t r = t * B + gb;
      acc_t g3[3];
      dpd_s[i] = bwd_element<GRU, RELU, acc_t, scalar_t>(is_active(len, gb, t), H, j, dh_s[i], go + r * H,
                                                         ws + r * ws_width(GRU) * H, dgx + r * GH,
                                                         GRU ? dgh + r * GH : dgx + r * GH, g3);
#pragma unroll
      for (int g = 0; g < G; ++g) dgh_s[b * GH + g * H + j] = g3[g];
    }
    __syncthreads();
    // dh_prev[b][k] = direct + sum_row dG_h[b][row] W[row][k]: consecutive threads, consecutive k
    for (int64_t i = threadIdx.x; i < nb * H; i += blockDim.x) {
      const int64_t b = i / H, k = i % H;
      acc_t acc = dpd_s[i];
      for (int64_t row = 0; row < GH; ++row) acc += dgh_s[b * GH + row] * acc_t(w_s[row * H + k]);
      dh_s[i] = acc;
    }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < nb * H; i += blockDim.x) dh0[b0 * H + i] = scalar_t(dh_s[i]);
}

// ---------------------------------------------------------------- stacked layers: the wavefront
// Every layer of a unidirectional stack in one launch. Each block owns kRows batch rows in every
// layer and keeps each layer's W_hh, and the W_ih of the layers above the first, in shared
// memory. At tick s layer l runs its step s - l, beside layer l - 1 at step s - l + 1: its input
// (layer l - 1's output at step s - l) is that layer's state after the previous tick, so the
// activations between layers never leave the chip. Layer 0's input gates come from the one GEMM
// before the launch. Same outputs and workspace layout as one persistent_fwd_kernel per layer.
constexpr int kMaxStackLayers = 4;
constexpr int kStackThreads = 512;

template <typename scalar_t>
struct StackLayers {  // per layer; w_ih[0] and b_ih[0] unused (layer 0's input gates come precomputed)
  const scalar_t* w_hh[kMaxStackLayers];
  const scalar_t* w_ih[kMaxStackLayers];
  const scalar_t* b_hh[kMaxStackLayers];
  const scalar_t* b_ih[kMaxStackLayers];
  scalar_t* out[kMaxStackLayers];  // (T, B, H)
  scalar_t* ws[kMaxStackLayers];   // (T, B, W * H); null where none is saved
};

template <bool GRU, bool RELU, typename scalar_t>
__global__ void __launch_bounds__(kStackThreads)
stack_fwd_kernel(int64_t L, int64_t T, int64_t B, int64_t H, const int64_t* __restrict__ len,
                 const scalar_t* __restrict__ gx0, const scalar_t* __restrict__ h0, StackLayers<scalar_t> layers,
                 scalar_t* __restrict__ h_n) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = GRU ? 3 : 1;
  constexpr int W = ws_width(GRU);
  const int64_t GH = G * H, GHp = GH + 1;
  acc_t* h_s = cuda::dynamic_shared<acc_t>();  // [L][kRows][H] states
  acc_t* gh_s = h_s + L * kRows * H;           // [L][kRows][GH] recurrent gates
  acc_t* gx_s = gh_s + L * kRows * GH;         // [L][kRows][GH] input gates of layers >= 1
  // [2L - 1][H][GHp]: layer l's W_hh transposed at 2l, its W_ih at 2l - 1 (rows padded as in
  // persistent_fwd_kernel)
  scalar_t* wt_s = reinterpret_cast<scalar_t*>(gx_s + L * kRows * GH);
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t nb = B - b0 < kRows ? B - b0 : kRows;

  for (int64_t l = 0; l < L; ++l) {
    for (int64_t i = threadIdx.x; i < GH * H; i += blockDim.x) {
      const int64_t row = i / H, k = i % H;
      wt_s[(2 * l * H + k) * GHp + row] = layers.w_hh[l][i];
      if (l > 0) wt_s[((2 * l - 1) * H + k) * GHp + row] = layers.w_ih[l][i];
    }
    for (int64_t i = threadIdx.x; i < kRows * H; i += blockDim.x) {
      const int64_t b = i / H;
      h_s[l * kRows * H + i] = b < nb ? acc_t(h0[(l * B + b0 + b) * H + i % H]) : acc_t(0);
    }
  }
  __syncthreads();

  for (int64_t s = 0; s < T + L - 1; ++s) {
    // the mat-vecs of the layers running this tick: item (l, input?, row)
    for (int64_t item = threadIdx.x; item < L * 2 * GH; item += blockDim.x) {
      const int64_t l = item / (2 * GH), input = item % (2 * GH) / GH, row = item % GH;
      if (s - l < 0 || s - l >= T || (input && l == 0)) continue;
      const scalar_t* w = wt_s + ((input ? 2 * l - 1 : 2 * l) * H) * GHp;
      const acc_t* h = h_s + (input ? l - 1 : l) * kRows * H;
      acc_t acc[kRows];
#pragma unroll
      for (int b = 0; b < kRows; ++b) acc[b] = acc_t(0);
      for (int64_t k = 0; k < H; ++k) {
        const acc_t wv = acc_t(w[k * GHp + row]);
#pragma unroll
        for (int b = 0; b < kRows; ++b) acc[b] += wv * h[b * H + k];
      }
      const acc_t bias = input && layers.b_ih[l] ? acc_t(layers.b_ih[l][row]) : acc_t(0);
      acc_t* dst = (input ? gx_s : gh_s) + l * kRows * GH;
#pragma unroll
      for (int b = 0; b < kRows; ++b) dst[b * GH + row] = acc[b] + bias;
    }
    __syncthreads();
    // the gates of the layers running this tick
    for (int64_t item = threadIdx.x; item < L * nb * H; item += blockDim.x) {
      const int64_t l = item / (nb * H), i = item % (nb * H), b = i / H, j = i % H, gb = b0 + b;
      const int64_t t = s - l;
      if (t < 0 || t >= T) continue;
      const int64_t r = t * B + gb;
      const bool active = is_active(len, gb, t);
      acc_t* h = h_s + l * kRows * H;
      const acc_t* gh = gh_s + (l * kRows + b) * GH;
      if (l == 0) {
        h[i] = fwd_element<GRU, RELU, acc_t, scalar_t>(active, H, j, gx0 + r * GH, gh, layers.b_hh[0], h[i],
                                                       layers.out[0] + r * H, ws_at(layers.ws[0], r * W * H));
      } else {
        h[i] = fwd_element<GRU, RELU, acc_t, scalar_t>(active, H, j, gx_s + (l * kRows + b) * GH, gh,
                                                       layers.b_hh[l], h[i], layers.out[l] + r * H,
                                                       ws_at(layers.ws[l], r * W * H));
      }
    }
    __syncthreads();
  }
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = threadIdx.x; i < nb * H; i += blockDim.x)
      h_n[(l * B + b0) * H + i] = scalar_t(h_s[l * kRows * H + i]);
}

// Backward of the stack, the same wavefront from the top layer down: at tick s layer l runs its
// step T - 1 - (s - (L - 1 - l)). The gradient reaching its output at that step, dx of layer
// l + 1 = dG_x W_ih, was computed on chip by layer l + 1 one tick before. Only the sequential
// parts are here (as in persistent_bwd_kernel); the weight gradients are GEMMs after the launch.
template <typename scalar_t>
struct StackGrads {  // per layer
  const scalar_t* w_hh[kMaxStackLayers];
  const scalar_t* w_ih[kMaxStackLayers];  // [0] unused
  const scalar_t* ws[kMaxStackLayers];    // (T, B, W * H)
  scalar_t* dgx[kMaxStackLayers];         // (T, B, GH)
  scalar_t* dgh[kMaxStackLayers];         // (T, B, GH); the RNN: dgx itself
};

template <bool GRU, bool RELU, typename scalar_t>
__global__ void __launch_bounds__(kStackThreads)
stack_bwd_kernel(int64_t L, int64_t T, int64_t B, int64_t H, const int64_t* __restrict__ len,
                 const scalar_t* __restrict__ go_top, const scalar_t* __restrict__ g_hn, StackGrads<scalar_t> layers,
                 scalar_t* __restrict__ dh0) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = GRU ? 3 : 1;
  constexpr int W = ws_width(GRU);
  const int64_t GH = G * H;
  acc_t* dh_s = cuda::dynamic_shared<acc_t>();  // [L][kRows][H] carried gradients
  acc_t* dpd_s = dh_s + L * kRows * H;          // [L][kRows][H] direct part of dh_prev
  acc_t* dy_s = dpd_s + L * kRows * H;          // [L][kRows][H] gradient of layer l's output (l < L - 1)
  acc_t* dgh_s = dy_s + L * kRows * H;          // [L][kRows][GH] recurrent gate gradients
  // [2L - 1][GH][H], as in memory: layer l's W_hh at 2l, its W_ih at 2l - 1
  scalar_t* w_s = reinterpret_cast<scalar_t*>(dgh_s + L * kRows * GH);
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t nb = B - b0 < kRows ? B - b0 : kRows;

  for (int64_t l = 0; l < L; ++l) {
    for (int64_t i = threadIdx.x; i < GH * H; i += blockDim.x) {
      w_s[2 * l * GH * H + i] = layers.w_hh[l][i];
      if (l > 0) w_s[(2 * l - 1) * GH * H + i] = layers.w_ih[l][i];
    }
    for (int64_t i = threadIdx.x; i < kRows * H; i += blockDim.x) {
      const int64_t b = i / H;
      dh_s[l * kRows * H + i] = b < nb ? acc_t(g_hn[(l * B + b0 + b) * H + i % H]) : acc_t(0);
    }
  }
  __syncthreads();

  for (int64_t s = 0; s < T + L - 1; ++s) {
    // the gates of the layers running this tick
    for (int64_t item = threadIdx.x; item < L * nb * H; item += blockDim.x) {
      const int64_t l = item / (nb * H), i = item % (nb * H), b = i / H, j = i % H, gb = b0 + b;
      const int64_t t = T - 1 - (s - (L - 1 - l));
      if (t < 0 || t >= T) continue;
      const int64_t r = t * B + gb;
      const bool active = is_active(len, gb, t);
      acc_t g3[3];
      const acc_t dh = dh_s[l * kRows * H + i];
      scalar_t* dgx = layers.dgx[l] + r * GH;
      scalar_t* dgh = GRU ? layers.dgh[l] + r * GH : dgx;
      const scalar_t* ws = layers.ws[l] + r * W * H;
      dpd_s[l * kRows * H + i] =
          l == L - 1 ? bwd_element<GRU, RELU, acc_t, scalar_t>(active, H, j, dh, go_top + r * H, ws, dgx, dgh, g3)
                     : bwd_element<GRU, RELU, acc_t, scalar_t>(active, H, j, dh, dy_s + (l * kRows + b) * H, ws, dgx,
                                                               dgh, g3);
#pragma unroll
      for (int g = 0; g < G; ++g) dgh_s[(l * kRows + b) * GH + g * H + j] = g3[g];
    }
    __syncthreads();
    // the mat-vecs: dh_prev = direct + dG_h W_hh, and the layer below's output gradient dG_x W_ih
    // (dG_x as written above, in scalar_t, as the per-layer path's GEMM reads it)
    for (int64_t item = threadIdx.x; item < L * 2 * nb * H; item += blockDim.x) {
      const int64_t l = item / (2 * nb * H), input = item % (2 * nb * H) / (nb * H), i = item % (nb * H);
      const int64_t b = i / H, k = i % H, t = T - 1 - (s - (L - 1 - l));
      if (t < 0 || t >= T || (input && l == 0)) continue;
      const scalar_t* w = w_s + (input ? 2 * l - 1 : 2 * l) * GH * H;
      if (input) {
        const scalar_t* dgx = layers.dgx[l] + (t * B + b0 + b) * GH;
        acc_t acc = acc_t(0);
        for (int64_t row = 0; row < GH; ++row) acc += acc_t(dgx[row]) * acc_t(w[row * H + k]);
        dy_s[((l - 1) * kRows + b) * H + k] = acc;
      } else {
        const acc_t* dgh = dgh_s + (l * kRows + b) * GH;
        acc_t acc = dpd_s[l * kRows * H + i];
        for (int64_t row = 0; row < GH; ++row) acc += dgh[row] * acc_t(w[row * H + k]);
        dh_s[l * kRows * H + i] = acc;
      }
    }
    __syncthreads();
  }
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = threadIdx.x; i < nb * H; i += blockDim.x)
      dh0[(l * B + b0) * H + i] = scalar_t(dh_s[l * kRows * H + i]);
}

// ---------------------------------------------------------------- per-step kernels
// One thread per (row, unit).
template <bool GRU, bool RELU, typename scalar_t>
__global__ void step_fwd_kernel(int64_t B, int64_t H, int64_t t, const int64_t* __restrict__ len,
                                const scalar_t* __restrict__ gx_t, const scalar_t* __restrict__ gh,
                                const scalar_t* __restrict__ bias, scalar_t* __restrict__ h,
                                scalar_t* __restrict__ out_t, scalar_t* __restrict__ ws_t) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = GRU ? 3 : 1;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * H) return;
  const int64_t b = i / H, j = i % H;
  acc_t gh_v[3];
#pragma unroll
  for (int g = 0; g < G; ++g) gh_v[g] = acc_t(gh[b * G * H + g * H + j]);
  h[i] = scalar_t(unit_forward<GRU, RELU, acc_t, scalar_t>(is_active(len, b, t), H, j, gx_t + b * G * H, gh_v, bias,
                                                           acc_t(h[i]), out_t + b * H, ws_at(ws_t, b * ws_width(GRU) * H)));
}

template <bool GRU, bool RELU, typename scalar_t>
__global__ void step_bwd_kernel(int64_t B, int64_t H, int64_t t, const int64_t* __restrict__ len,
                                const scalar_t* __restrict__ dh, const scalar_t* __restrict__ go_t,
                                const scalar_t* __restrict__ ws_t, scalar_t* __restrict__ dgx_t,
                                scalar_t* __restrict__ dgh_t, scalar_t* __restrict__ dprev) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = GRU ? 3 : 1;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * H) return;
  const int64_t b = i / H, j = i % H;
  acc_t g3[3];
  dprev[i] = scalar_t(unit_backward<GRU, RELU, acc_t, scalar_t>(is_active(len, b, t), H, j, acc_t(dh[i]),
                                                                go_t + b * H, ws_t + b * ws_width(GRU) * H,
                                                                dgx_t + b * G * H, dgh_t + b * G * H, g3));
}

// ---------------------------------------------------------------- grid-wide persistent kernels
// For W_hh too large for one SM: one cooperative launch whose blocks hold slices of it, and one
// grid barrier per step (launch.h: grid_sync). Block k owns the units J_k = [k S, k S + S).
//  * forward: it keeps the G S rows of W_hh that produce its units' gates in shared memory; per
//    step it reads the whole previous state (written by every block) from a double-buffered
//    state in global memory, R batch rows at a time, computes its units' recurrent gate sums,
//    runs the gate math and writes its units of the new state; then the barrier.
//  * backward: it keeps the S columns of W_hh of its units; per reverse step dh_t[:, J_k] is
//    the direct part it kept from the step after plus dG_h,t+1 (every block's, double-buffered
//    in global memory) times those columns; then the gate math, which writes its units' dG_h,t;
//    then the barrier. After the last step the same product gives dh0.
// Each thread computes one dot product's share for all R rows of a pass (accumulators in
// registers, so each weight read from shared memory serves R multiply-adds); a dot product is
// split over P threads, strided over its length, whose partial sums are added in a fixed order:
// the results do not depend on the scheduling. The state and the carried gradients stay in
// acc_t, as in the one-block kernels.
constexpr int kGridThreads = 256;
constexpr int64_t kGridRows = 8;  // batch rows per pass, at most

// Row stride of the forward's W_hh slice in shared memory: with P threads on consecutive k of
// one row and the next row's threads after them, every lane of a warp reads a distinct bank.
__host__ __device__ __forceinline__ int64_t grid_w_stride(int64_t H, int64_t P) { return (H + 31) / 32 * 32 + P; }

// The grid kernels' dot products, each split over P threads: for dot d < dots (skipped when its
// unit d % S is past the block's ns) and row b < nb of the pass, part_s[(b * dots + d) * P + p]
// = the sum over i = p, p + P, ... < length of w[d * w_d + i * w_i] * x[b * length + i]. Each
// thread keeps its R rows' accumulators in registers (x's rows nb..R-1 are zeros).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ void split_dots(int64_t dots, int64_t length, int64_t S, int64_t ns, int64_t R,
                                           int64_t nb, int64_t P, const scalar_t* w, int64_t w_d, int64_t w_i,
                                           const acc_t* x, acc_t* part_s) {
  for (int64_t q = threadIdx.x; q < dots * P; q += blockDim.x) {
    const int64_t p = q % P, d = q / P;
    if (d % S >= ns) continue;
    acc_t acc[kGridRows];
#pragma unroll
    for (int b = 0; b < kGridRows; ++b) acc[b] = acc_t(0);
    for (int64_t i = p; i < length; i += P) {
      const acc_t wv = acc_t(w[d * w_d + i * w_i]);
#pragma unroll
      for (int b = 0; b < kGridRows; ++b)
        if (b < R) acc[b] += wv * x[b * length + i];
    }
#pragma unroll
    for (int b = 0; b < kGridRows; ++b)
      if (b < nb) part_s[(b * dots + d) * P + p] = acc[b];
  }
}

// One dot product's P partial sums, added in order.
template <typename acc_t>
__device__ __forceinline__ acc_t sum_parts(const acc_t* parts, int64_t P) {
  acc_t sum = parts[0];
  for (int64_t p = 1; p < P; ++p) sum += parts[p];
  return sum;
}

template <bool GRU, bool RELU, typename scalar_t>
__global__ void __launch_bounds__(kGridThreads)
grid_fwd_kernel(int64_t T, int64_t B, int64_t H, int64_t S, int64_t R, int64_t P, bool reverse,
                const int64_t* __restrict__ len, const scalar_t* __restrict__ gx, const scalar_t* __restrict__ h0,
                const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                scalar_t* __restrict__ h_n, scalar_t* __restrict__ ws, at::opmath_type<scalar_t>* state) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = GRU ? 3 : 1;
  const int64_t GH = G * H, GS = G * S, Wp = grid_w_stride(H, P);
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * S, ns = H - j0 < S ? H - j0 : S;
  acc_t* h_s = cuda::dynamic_shared<acc_t>();                          // [R][H] previous state
  acc_t* part_s = h_s + R * H;                                         // [R][GS][P] partial gate sums
  scalar_t* w_s = reinterpret_cast<scalar_t*>(part_s + R * GS * P);    // [GS][Wp]: row g S + jj = W[g H + j0 + jj]
  for (int64_t i = threadIdx.x; i < GS * H; i += blockDim.x) {
    const int64_t row = i / H, k = i % H, jj = row % S;
    if (jj < ns) w_s[row * Wp + k] = w[((row / S) * H + j0 + jj) * H + k];
  }
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const acc_t* prev = state + ((s + 1) & 1) * B * H;  // h_{s-1}, from every block
    acc_t* next = state + (s & 1) * B * H;
    for (int64_t c0 = 0; c0 < B; c0 += R) {
      const int64_t nb = B - c0 < R ? B - c0 : R;
      __syncthreads();  // h_s and part_s are free (and, the first time, w_s is written)
      for (int64_t i = threadIdx.x; i < R * H; i += blockDim.x) {  // rows past the batch: zeros
        const int64_t at = c0 * H + i;
        h_s[i] = i >= nb * H ? acc_t(0) : s == 0 ? acc_t(h0[at]) : cuda::load_from_grid(prev + at);
      }
      __syncthreads();
      split_dots(GS, H, S, ns, R, nb, P, w_s, Wp, 1, h_s, part_s);
      __syncthreads();
      for (int64_t i = threadIdx.x; i < nb * ns; i += blockDim.x) {
        const int64_t b = i / ns, jj = i % ns, j = j0 + jj, gb = c0 + b, r = t * B + gb;
        acc_t gh_v[3];
#pragma unroll
        for (int g = 0; g < G; ++g) gh_v[g] = sum_parts(part_s + (b * GS + g * S + jj) * P, P);
        const acc_t h = unit_forward<GRU, RELU, acc_t, scalar_t>(is_active(len, gb, t), H, j, gx + r * GH, gh_v, bias,
                                                                 h_s[b * H + j], out + r * H,
                                                                 ws_at(ws, r * ws_width(GRU) * H));
        next[gb * H + j] = h;
        if (s == T - 1) h_n[gb * H + j] = scalar_t(h);
      }
    }
    if (s + 1 < T) cuda::grid_sync();
  }
}

template <bool GRU, bool RELU, typename scalar_t>
__global__ void __launch_bounds__(kGridThreads)
grid_bwd_kernel(int64_t T, int64_t B, int64_t H, int64_t S, int64_t R, int64_t P, bool reverse,
                const int64_t* __restrict__ len, const scalar_t* __restrict__ go, const scalar_t* __restrict__ g_hn,
                const scalar_t* __restrict__ ws, const scalar_t* __restrict__ w, scalar_t* __restrict__ dgx,
                scalar_t* __restrict__ dgh, scalar_t* __restrict__ dh0, at::opmath_type<scalar_t>* dgh_grid,
                at::opmath_type<scalar_t>* __restrict__ carry) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = GRU ? 3 : 1;
  const int64_t GH = G * H, Sp = S | 1;  // odd row stride: P threads on consecutive rows hit distinct banks
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * S, ns = H - j0 < S ? H - j0 : S;
  acc_t* d_s = cuda::dynamic_shared<acc_t>();                        // [R][GH] dG_h of the step after
  acc_t* part_s = d_s + R * GH;                                      // [R][S][P] partial products
  scalar_t* w_s = reinterpret_cast<scalar_t*>(part_s + R * S * P);   // [GH][Sp]: W[row][j0 + jj]
  for (int64_t i = threadIdx.x; i < GH * S; i += blockDim.x) {
    const int64_t row = i / S, jj = i % S;
    if (jj < ns) w_s[row * Sp + jj] = w[row * H + j0 + jj];
  }
  // dG_h (of the step after: every block's) times this block's columns of W_hh, for R rows from
  // c0: part_s[b][jj][p], summed by recurrent_part.
  auto products = [&](const acc_t* dgh_after, int64_t c0, int64_t nb) {
    __syncthreads();  // d_s and part_s are free (and, the first time, w_s is written)
    for (int64_t i = threadIdx.x; i < R * GH; i += blockDim.x) {  // rows past the batch: zeros
      d_s[i] = i >= nb * GH ? acc_t(0) : cuda::load_from_grid(dgh_after + c0 * GH + i);
    }
    __syncthreads();
    split_dots(S, GH, S, ns, R, nb, P, w_s, 1, Sp, d_s, part_s);
    __syncthreads();
  };
  auto recurrent_part = [&](int64_t b, int64_t jj) { return sum_parts(part_s + (b * S + jj) * P, P); };
  for (int64_t s = T - 1; s >= 0; --s) {  // the forward order, reversed
    const int64_t t = reverse ? T - 1 - s : s;
    const acc_t* after = dgh_grid + ((s + 1) & 1) * B * GH;  // dG_h of step s + 1
    acc_t* mine = dgh_grid + (s & 1) * B * GH;
    for (int64_t c0 = 0; c0 < B; c0 += R) {
      const int64_t nb = B - c0 < R ? B - c0 : R;
      if (s < T - 1) products(after, c0, nb);
      for (int64_t i = threadIdx.x; i < nb * ns; i += blockDim.x) {
        const int64_t b = i / ns, jj = i % ns, j = j0 + jj, gb = c0 + b, r = t * B + gb;
        const acc_t dh = s == T - 1 ? acc_t(g_hn[gb * H + j]) : carry[gb * H + j] + recurrent_part(b, jj);
        acc_t g3[3];
        carry[gb * H + j] = unit_backward<GRU, RELU, acc_t, scalar_t>(
            is_active(len, gb, t), H, j, dh, go + r * H, ws + r * ws_width(GRU) * H, dgx + r * GH,
            GRU ? dgh + r * GH : dgx + r * GH, g3);
#pragma unroll
        for (int g = 0; g < G; ++g) mine[gb * GH + g * H + j] = g3[g];
      }
    }
    cuda::grid_sync();
  }
  for (int64_t c0 = 0; c0 < B; c0 += R) {  // dh0 = the direct part + dG_h of step 0 times W_hh
    const int64_t nb = B - c0 < R ? B - c0 : R;
    products(dgh_grid, c0, nb);
    for (int64_t i = threadIdx.x; i < nb * ns; i += blockDim.x) {
      const int64_t b = i / ns, jj = i % ns, gb = c0 + b;
      dh0[gb * H + j0 + jj] = scalar_t(carry[gb * H + j0 + jj] + recurrent_part(b, jj));
    }
  }
}

// ---------------------------------------------------------------- host side
template <typename scalar_t>
size_t fwd_smem_bytes(int64_t H, int G) {
  using acc_t = at::opmath_type<scalar_t>;
  return (kRows * H + kRows * G * H) * sizeof(acc_t) + H * (G * H + 1) * sizeof(scalar_t);  // wt_s padded
}
template <typename scalar_t>
size_t stack_smem_bytes(int64_t L, int64_t H, int G) {
  using acc_t = at::opmath_type<scalar_t>;
  return L * kRows * (H + 2 * G * H) * sizeof(acc_t) + (2 * L - 1) * H * (G * H + 1) * sizeof(scalar_t);
}
template <typename scalar_t>
size_t stack_bwd_smem_bytes(int64_t L, int64_t H, int G) {
  using acc_t = at::opmath_type<scalar_t>;
  return L * kRows * (3 * H + G * H) * sizeof(acc_t) + (2 * L - 1) * G * H * H * sizeof(scalar_t);
}
template <typename scalar_t>
size_t bwd_smem_bytes(int64_t H, int G) {
  using acc_t = at::opmath_type<scalar_t>;
  return (2 * kRows * H + kRows * G * H) * sizeof(acc_t) + G * H * H * sizeof(scalar_t);
}

int persistent_blocks(int64_t B) { return static_cast<int>((B + kRows - 1) / kRows); }

// The grid path's geometry: S units per block, R batch rows per pass, P threads per dot product.
struct GridPlan {
  int64_t blocks = 0;  // 0: the grid path does not apply
  int64_t slice = 0, rows = 0, parts = 1;
  size_t smem = 0;
};

// Past this many multiply-adds per block and step the per-step path's cuBLAS GEMM (every SM,
// register-tiled) should win: at ~30 multiply-adds per clock per SM from shared memory, a grid
// step then takes ~5 us, a GEMM and a pointwise launch about as long. A guess until measured.
constexpr int64_t kGridMaxBlockMacs = int64_t(1) << 18;

// The power of two P <= 32 (and <= the dot length) such that `outputs` dot products, P threads
// each, fill the block best.
inline int64_t dot_parts(int64_t outputs, int64_t length) {
  int64_t p = 1;
  while (p < 32 && 2 * p * outputs <= kGridThreads && 2 * p <= length) p *= 2;
  return p;
}

// The fewest units per block that put at most one block on each SM (more blocks would each read
// the whole state every step for less work), then the most rows per pass that fit in shared
// memory. The forward keeps G S rows of W_hh and one pass of the state (R x H), the backward S
// columns of W_hh and one pass of dG_h (R x GH); each thread computes one of G S (forward) or S
// (backward) dot products' P shares for all R rows.
template <typename scalar_t, typename Kernel>
GridPlan grid_plan(Kernel kernel, bool backward, int64_t B, int64_t H, int G, int device, bool work_limit) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t S = (H + cuda::sm_count(device) - 1) / cuda::sm_count(device);
  if (work_limit && B * G * S * H > kGridMaxBlockMacs) return GridPlan{};
  const int64_t dots = backward ? S : G * S, length = backward ? G * H : H;
  const int64_t P = dot_parts(dots, length);
  for (int64_t R = std::min(B, kGridRows); R >= 1; --R) {
    const size_t smem = (R * length + R * dots * P) * sizeof(acc_t) +
                        (backward ? G * H * (S | 1) : G * S * grid_w_stride(H, P)) * sizeof(scalar_t);
    if (static_cast<int64_t>(smem) > cuda::max_dynamic_smem(device)) continue;
    const int64_t blocks = (H + S - 1) / S;
    if (blocks > cuda::co_resident_blocks(kernel, kGridThreads, smem, device)) return GridPlan{};
    return GridPlan{blocks, S, R, P, smem};
  }
  return GridPlan{};
}

c10::optional<at::Tensor> device_lengths(const c10::optional<at::Tensor>& lengths, const at::Tensor& like) {
  if (!lengths.has_value()) return c10::nullopt;
  return lengths->to(like.device(), at::kLong).contiguous();
}

// The path of one layer. HNRNN_CUDA_RECURRENCE_PATH = persistent, grid or step forces one (for
// benchmarks that compare them at the same shape; the grid path then ignores its work limit, and
// stacks run layer by layer); unset or "auto", choose_path decides. A forced path that cannot run
// is an error.
enum class Path { kAuto, kPersistent, kGrid, kStep };

Path forced_path() {
  const char* v = std::getenv("HNRNN_CUDA_RECURRENCE_PATH");
  const std::string name = v ? v : "";
  if (name.empty() || name == "auto") return Path::kAuto;
  if (name == "persistent") return Path::kPersistent;
  if (name == "grid") return Path::kGrid;
  if (name == "step") return Path::kStep;
  TORCH_CHECK_VALUE(false, "HNRNN_CUDA_RECURRENCE_PATH must be auto, persistent, grid or step, got '", name, "'");
}

// The path of one call and, for the grid path, its plan: the forced path, checked; else the
// one-block persistent kernel where it fits, else the grid kernel where it has a plan, else per
// step. `make_plan(work_limit)` (grid_plan: a device occupancy query) runs only where the grid
// path is a candidate, so the persistent path's calls (the seed's shapes) do not pay for it.
template <typename MakePlan>
std::pair<Path, GridPlan> choose_path(bool fits_one_block, int64_t H, const MakePlan& make_plan) {
  const Path forced = forced_path();
  TORCH_CHECK(forced != Path::kPersistent || fits_one_block, "HNRNN_CUDA_RECURRENCE_PATH=persistent: W_hh of hidden ",
              "size ", H, " does not fit one block's shared memory");
  const bool grid_candidate = forced == Path::kGrid || (forced == Path::kAuto && !fits_one_block);
  const GridPlan plan = grid_candidate ? make_plan(forced == Path::kAuto) : GridPlan{};
  TORCH_CHECK(forced != Path::kGrid || plan.blocks > 0, "HNRNN_CUDA_RECURRENCE_PATH=grid: W_hh of hidden size ", H,
              " does not fit across the SMs of one cooperative launch");
  if (forced != Path::kAuto) return {forced, plan};
  return {fits_one_block ? Path::kPersistent : plan.blocks > 0 ? Path::kGrid : Path::kStep, plan};
}

template <bool GRU, bool RELU>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(const at::Tensor& gates_x_, const at::Tensor& h0_,
                                                            const at::Tensor& w_hh_,
                                                            const c10::optional<at::Tensor>& b_hh, bool reverse,
                                                            const c10::optional<at::Tensor>& lengths, bool save) {
  constexpr int G = GRU ? 3 : 1;
  check_recurrence_inputs(gates_x_, h0_, w_hh_, b_hh, lengths, G);
  cuda::DeviceGuard guard(gates_x_.device());
  const at::Tensor gates_x = gates_x_.contiguous(), h0 = h0_.contiguous(), w_hh = w_hh_.contiguous();
  const at::Tensor bias = b_hh.has_value() ? b_hh->contiguous() : at::Tensor();
  const auto len = device_lengths(lengths, gates_x);
  const int64_t T = gates_x.size(0), B = gates_x.size(1), H = h0.size(1);
  at::Tensor out = empty_output({T, B, H}, h0.options());
  at::Tensor ws = empty_output(workspace_shape(GRU, T, B, H, save), h0.options());
  at::Tensor h_n = empty_output({B, H}, h0.options());
  if (T == 0 || B == 0) return std::make_tuple(out, h0.clone(), ws);
  const auto stream = cuda::current_stream();
  const int64_t* lp = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h0.scalar_type(), "hnrnn_recurrence_cuda", [&] {
    const scalar_t* bp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    scalar_t* wsp = save ? ws.data_ptr<scalar_t>() : nullptr;
    using acc_t = at::opmath_type<scalar_t>;
    const int device = gates_x.get_device();
    const size_t smem = fwd_smem_bytes<scalar_t>(H, G);
    const auto grid_kernel = grid_fwd_kernel<GRU, RELU, scalar_t>;
    const bool fits_one_block = static_cast<int64_t>(smem) <= cuda::max_dynamic_smem(device);
    const auto [path, plan] = choose_path(fits_one_block, H, [&](bool work_limit) {
      return grid_plan<scalar_t>(grid_kernel, false, B, H, G, device, work_limit);
    });
    if (path == Path::kPersistent) {
      cuda::launch(persistent_fwd_kernel<GRU, RELU, scalar_t>, persistent_blocks(B), kThreads, smem, stream, T, B,
                   H, reverse, lp, gates_x.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                   bp, out.data_ptr<scalar_t>(), h_n.data_ptr<scalar_t>(), wsp);
    } else if (path == Path::kGrid) {
      at::Tensor state = empty_output({2, B, H}, h0.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      cuda::launch_cooperative(grid_kernel, plan.blocks, kGridThreads, plan.smem, stream, T, B, H, plan.slice,
                               plan.rows, plan.parts, reverse, lp, gates_x.data_ptr<scalar_t>(),
                               h0.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), bp, out.data_ptr<scalar_t>(),
                               h_n.data_ptr<scalar_t>(), wsp, state.data_ptr<acc_t>());
    } else {
      h_n.copy_(h0);  // the running state
      at::Tensor gh = empty_output({B, G * H}, h0.options());
      const at::Tensor w_t = w_hh.t();
      const int blocks = static_cast<int>((B * H + kThreads - 1) / kThreads);
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = reverse ? T - 1 - s : s;
        at::mm_out(gh, h_n, w_t);
        cuda::launch(step_fwd_kernel<GRU, RELU, scalar_t>, blocks, kThreads, 0, stream, B, H, t, lp,
                     gates_x.data_ptr<scalar_t>() + t * B * G * H, gh.data_ptr<scalar_t>(), bp,
                     h_n.data_ptr<scalar_t>(), out.data_ptr<scalar_t>() + t * B * H,
                     ws_at(wsp, t * B * ws_width(GRU) * H));
      }
    }
  });
  return std::make_tuple(out, h_n, ws);
}

template <bool GRU, bool RELU>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_out_, const at::Tensor& grad_h_n_,
                                                             const at::Tensor& ws_, const at::Tensor& w_hh_,
                                                             bool reverse, const c10::optional<at::Tensor>& lengths) {
  constexpr int G = GRU ? 3 : 1;
  check_recurrence_backward_inputs(grad_out_, grad_h_n_, ws_, w_hh_, lengths, G, ws_width(GRU));
  cuda::DeviceGuard guard(grad_out_.device());
  const at::Tensor grad_out = grad_out_.contiguous(), grad_h_n = grad_h_n_.contiguous();
  const at::Tensor ws = ws_.contiguous(), w_hh = w_hh_.contiguous();
  const int64_t T = grad_out.size(0), B = grad_out.size(1), H = grad_out.size(2);
  const auto len = device_lengths(lengths, grad_out);
  at::Tensor dgx = empty_output({T, B, G * H}, grad_out.options());
  at::Tensor dgh = GRU ? empty_output({T, B, G * H}, grad_out.options()) : dgx;
  at::Tensor dh0 = empty_output({B, H}, grad_out.options());
  if (T == 0 || B == 0) return std::make_tuple(dgx, dgh, grad_h_n.clone());
  const auto stream = cuda::current_stream();
  const int64_t* lp = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "hnrnn_recurrence_backward_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int device = grad_out.get_device();
    const size_t smem = bwd_smem_bytes<scalar_t>(H, G);
    const auto grid_kernel = grid_bwd_kernel<GRU, RELU, scalar_t>;
    const bool fits_one_block = static_cast<int64_t>(smem) <= cuda::max_dynamic_smem(device);
    const auto [path, plan] = choose_path(fits_one_block, H, [&](bool work_limit) {
      return grid_plan<scalar_t>(grid_kernel, true, B, H, G, device, work_limit);
    });
    if (path == Path::kPersistent) {
      cuda::launch(persistent_bwd_kernel<GRU, RELU, scalar_t>, persistent_blocks(B), kThreads, smem, stream, T, B,
                   H, reverse, lp, grad_out.data_ptr<scalar_t>(), grad_h_n.data_ptr<scalar_t>(),
                   ws.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), dgx.data_ptr<scalar_t>(),
                   dgh.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>());
    } else if (path == Path::kGrid) {
      const auto acc_options = grad_out.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
      at::Tensor dgh_grid = empty_output({2, B, G * H}, acc_options), carry = empty_output({B, H}, acc_options);
      cuda::launch_cooperative(grid_kernel, plan.blocks, kGridThreads, plan.smem, stream, T, B, H, plan.slice,
                               plan.rows, plan.parts, reverse, lp, grad_out.data_ptr<scalar_t>(),
                               grad_h_n.data_ptr<scalar_t>(), ws.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                               dgx.data_ptr<scalar_t>(), dgh.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(),
                               dgh_grid.data_ptr<acc_t>(), carry.data_ptr<acc_t>());
    } else {
      // The carried gradient and the next one, swapped each step (no copy between them).
      at::Tensor carried = grad_h_n.clone(), next = empty_output({B, H}, grad_out.options());
      const int blocks = static_cast<int>((B * H + kThreads - 1) / kThreads);
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = reverse ? T - 1 - s : s;
        cuda::launch(step_bwd_kernel<GRU, RELU, scalar_t>, blocks, kThreads, 0, stream, B, H, t, lp,
                     carried.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>() + t * B * H,
                     ws.data_ptr<scalar_t>() + t * B * ws_width(GRU) * H, dgx.data_ptr<scalar_t>() + t * B * G * H,
                     dgh.data_ptr<scalar_t>() + t * B * G * H, next.data_ptr<scalar_t>());
        next.addmm_(dgh[t], w_hh);  // dh_prev = direct part + dG_h W_hh
        std::swap(carried, next);
      }
      dh0 = carried;
    }
  });
  return std::make_tuple(dgx, dgh, dh0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_recurrence_cuda(const at::Tensor& gates_x, const at::Tensor& h0,
                                                                   const at::Tensor& w_hh,
                                                                   const c10::optional<at::Tensor>& b_hh, bool reverse,
                                                                   const c10::optional<at::Tensor>& lengths, bool save) {
  return forward_impl<true, false>(gates_x, h0, w_hh, b_hh, reverse, lengths, save);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_recurrence_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& grad_h_n, const at::Tensor& ws, const at::Tensor& w_hh, bool reverse,
    const c10::optional<at::Tensor>& lengths) {
  return backward_impl<true, false>(grad_out, grad_h_n, ws, w_hh, reverse, lengths);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_recurrence_cuda(const at::Tensor& gates_x, const at::Tensor& h0,
                                                                   const at::Tensor& w_hh,
                                                                   const c10::optional<at::Tensor>& b_hh, bool relu,
                                                                   bool reverse,
                                                                   const c10::optional<at::Tensor>& lengths,
                                                                   bool save) {
  return relu ? forward_impl<false, true>(gates_x, h0, w_hh, b_hh, reverse, lengths, save)
              : forward_impl<false, false>(gates_x, h0, w_hh, b_hh, reverse, lengths, save);
}

std::tuple<at::Tensor, at::Tensor> rnn_recurrence_backward_cuda(const at::Tensor& grad_out, const at::Tensor& grad_h_n,
                                                                const at::Tensor& ws, const at::Tensor& w_hh,
                                                                bool relu, bool reverse,
                                                                const c10::optional<at::Tensor>& lengths) {
  auto r = relu ? backward_impl<false, true>(grad_out, grad_h_n, ws, w_hh, reverse, lengths)
                : backward_impl<false, false>(grad_out, grad_h_n, ws, w_hh, reverse, lengths);
  return std::make_tuple(std::get<0>(r), std::get<2>(r));
}

}  // namespace

namespace {
bool stack_fits_one_block(int64_t mode, int64_t num_layers, int64_t H, at::ScalarType dtype, int device) {
  if (num_layers < 1 || num_layers > kMaxStackLayers) return false;
  size_t smem = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "hnrnn_stack_recurrence_fits", [&] {
    smem = std::max(stack_smem_bytes<scalar_t>(num_layers, H, gates_of(mode)),
                    stack_bwd_smem_bytes<scalar_t>(num_layers, H, gates_of(mode)));
  });
  return static_cast<int64_t>(smem) <= cuda::max_dynamic_smem(device);
}
}  // namespace

// Whether rnn_network runs the stack as one wavefront: when it fits and no per-layer path is forced.
bool stack_recurrence_fits(int64_t mode, int64_t num_layers, int64_t H, at::ScalarType dtype, int device) {
  return forced_path() == Path::kAuto && stack_fits_one_block(mode, num_layers, H, dtype, device);
}

std::tuple<std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>> stack_recurrence_cuda(
    int64_t mode, const at::Tensor& gates_x0, const at::Tensor& hx, at::TensorList weights,
    const c10::optional<at::Tensor>& lengths, bool save) {
  const int64_t G = gates_of(mode), L = hx.dim() == 3 ? hx.size(0) : 0;
  TORCH_CHECK(mode == kGru || mode == kRnnTanh || mode == kRnnRelu, "stack_recurrence: unknown mode ", mode);
  TORCH_CHECK_VALUE(hx.dim() == 3 && L >= 1, "stack_recurrence: hx must be (layers, B, H), got ", hx.sizes());
  TORCH_CHECK_VALUE(weights.size() == static_cast<size_t>(2 * L) || weights.size() == static_cast<size_t>(4 * L),
                    "stack_recurrence: expected 2 or 4 weight tensors per layer (", L, " layers), got ",
                    weights.size());
  const bool bias = weights.size() == static_cast<size_t>(4 * L);
  const int64_t n = bias ? 4 : 2;
  std::vector<at::Tensor> w(weights.size());  // contiguous, kept alive for the launch
  for (int64_t l = 0; l < L; ++l) {
    const c10::optional<at::Tensor> b_hh = bias ? c10::optional<at::Tensor>(weights[l * n + 3]) : c10::nullopt;
    check_recurrence_inputs(gates_x0, hx[l], weights[l * n + 1], b_hh, lengths, G);  // W_hh, b_hh, hx[l]
    for (int64_t q = 0; q < n; ++q) w[l * n + q] = weights[l * n + q].contiguous();
    if (l == 0) continue;
    const at::Tensor &w_ih = w[l * n], &w_hh = w[l * n + 1];
    TORCH_CHECK_VALUE(w_ih.sizes() == w_hh.sizes(), "stack_recurrence: weight_ih of layer ", l, " must be ",
                      w_hh.sizes(), " (its input is the layer below, of size H), got ", w_ih.sizes());
    TORCH_CHECK_TYPE(w_ih.scalar_type() == w_hh.scalar_type(), "stack_recurrence: weight_ih of layer ", l,
                     " has dtype ", w_ih.scalar_type(), " but weight_hh has ", w_hh.scalar_type());
    TORCH_CHECK(w_ih.device() == w_hh.device(), "stack_recurrence: weight_ih of layer ", l, " is on ",
                w_ih.device(), " but weight_hh is on ", w_hh.device());
    if (bias) {
      TORCH_CHECK_VALUE(w[l * n + 2].sizes() == w[l * n + 3].sizes() &&
                            w[l * n + 2].scalar_type() == w_hh.scalar_type() &&
                            w[l * n + 2].device() == w_hh.device(),
                        "stack_recurrence: bias_ih of layer ", l, " must match bias_hh (", w[l * n + 3].sizes(),
                        ", ", w_hh.scalar_type(), ", ", w_hh.device(), ")");
    }
  }
  cuda::DeviceGuard guard(gates_x0.device());
  const at::Tensor gx0 = gates_x0.contiguous(), h0 = hx.contiguous();
  const auto len = device_lengths(lengths, gx0);
  const int64_t T = gx0.size(0), B = gx0.size(1), H = h0.size(2);
  TORCH_CHECK(stack_fits_one_block(mode, L, H, h0.scalar_type(), gx0.get_device()), "stack_recurrence: ", L,
              " layers of hidden size ", H, " do not fit one block's shared memory (run them one layer at a time)");
  std::vector<at::Tensor> out(L), ws(L);  // one tensor each, as the recurrence ops of one layer return
  for (int64_t l = 0; l < L; ++l) {
    out[l] = empty_output({T, B, H}, h0.options());
    ws[l] = empty_output(workspace_shape(mode == kGru, T, B, H, save), h0.options());
  }
  at::Tensor h_n = empty_output({L, B, H}, h0.options());
  if (T == 0 || B == 0) return std::make_tuple(out, h0.clone(), ws);
  const auto stream = cuda::current_stream();
  const int64_t* lp = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h0.scalar_type(), "hnrnn_stack_recurrence_cuda", [&] {
    StackLayers<scalar_t> layers{};
    for (int64_t l = 0; l < L; ++l) {
      layers.w_ih[l] = w[l * n].data_ptr<scalar_t>();
      layers.w_hh[l] = w[l * n + 1].data_ptr<scalar_t>();
      layers.b_ih[l] = bias ? w[l * n + 2].data_ptr<scalar_t>() : nullptr;
      layers.b_hh[l] = bias ? w[l * n + 3].data_ptr<scalar_t>() : nullptr;
      layers.out[l] = out[l].data_ptr<scalar_t>();
      layers.ws[l] = save ? ws[l].data_ptr<scalar_t>() : nullptr;
    }
    const auto kernel = mode == kGru       ? &stack_fwd_kernel<true, false, scalar_t>
                        : mode == kRnnRelu ? &stack_fwd_kernel<false, true, scalar_t>
                                           : &stack_fwd_kernel<false, false, scalar_t>;
    cuda::launch(kernel, persistent_blocks(B), kStackThreads, stack_smem_bytes<scalar_t>(L, H, G), stream, L, T, B, H,
                 lp, gx0.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), layers, h_n.data_ptr<scalar_t>());
  });
  return std::make_tuple(out, h_n, ws);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> stack_recurrence_backward_cuda(
    int64_t mode, const at::Tensor& grad_out, const at::Tensor& grad_h_n, at::TensorList ws, at::TensorList weights,
    const c10::optional<at::Tensor>& lengths) {
  const int64_t G = gates_of(mode), W = ws_width_of(mode), L = grad_h_n.dim() == 3 ? grad_h_n.size(0) : 0;
  TORCH_CHECK(mode == kGru || mode == kRnnTanh || mode == kRnnRelu, "stack_recurrence_backward: unknown mode ", mode);
  TORCH_CHECK_VALUE(grad_h_n.dim() == 3 && L >= 1 && ws.size() == static_cast<size_t>(L),
                    "stack_recurrence_backward: grad_h_n must be (layers, B, H) with a workspace per layer, got ",
                    grad_h_n.sizes(), " and ", ws.size(), " workspaces");
  TORCH_CHECK_VALUE(weights.size() == static_cast<size_t>(2 * L) || weights.size() == static_cast<size_t>(4 * L),
                    "stack_recurrence_backward: expected 2 or 4 weight tensors per layer (", L, " layers), got ",
                    weights.size());
  const int64_t n = weights.size() == static_cast<size_t>(4 * L) ? 4 : 2;
  std::vector<at::Tensor> w_hh(L), w_ih(L), ws_c(L);  // contiguous, kept alive for the launch
  for (int64_t l = 0; l < L; ++l) {
    check_recurrence_backward_inputs(grad_out, grad_h_n[l], ws[l], weights[l * n + 1], lengths, G, W);
    w_hh[l] = weights[l * n + 1].contiguous();
    w_ih[l] = weights[l * n].contiguous();
    ws_c[l] = ws[l].contiguous();
    TORCH_CHECK_VALUE(l == 0 || (w_ih[l].sizes() == w_hh[l].sizes() && w_ih[l].scalar_type() == w_hh[l].scalar_type() &&
                                 w_ih[l].device() == w_hh[l].device()),
                      "stack_recurrence_backward: weight_ih of layer ", l, " must match weight_hh (", w_hh[l].sizes(),
                      ", ", w_hh[l].scalar_type(), ", ", w_hh[l].device(), ")");
  }
  cuda::DeviceGuard guard(grad_out.device());
  const at::Tensor go = grad_out.contiguous(), g_hn = grad_h_n.contiguous();
  const auto len = device_lengths(lengths, go);
  const int64_t T = go.size(0), B = go.size(1), H = go.size(2);
  TORCH_CHECK(stack_fits_one_block(mode, L, H, go.scalar_type(), go.get_device()), "stack_recurrence_backward: ", L,
              " layers of hidden size ", H, " do not fit one block's shared memory (run them one layer at a time)");
  std::vector<at::Tensor> dgx(L), dgh(L);
  for (int64_t l = 0; l < L; ++l) {
    dgx[l] = empty_output({T, B, G * H}, go.options());
    dgh[l] = mode == kGru ? empty_output({T, B, G * H}, go.options()) : dgx[l];
  }
  at::Tensor dh0 = empty_output({L, B, H}, go.options());
  if (T == 0 || B == 0) return std::make_tuple(dgx, dgh, g_hn.clone());
  const int64_t* lp = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "hnrnn_stack_recurrence_backward_cuda",
                                  [&] {
    StackGrads<scalar_t> layers{};
    for (int64_t l = 0; l < L; ++l) {
      layers.w_hh[l] = w_hh[l].data_ptr<scalar_t>();
      layers.w_ih[l] = w_ih[l].data_ptr<scalar_t>();
      layers.ws[l] = ws_c[l].data_ptr<scalar_t>();
      layers.dgx[l] = dgx[l].data_ptr<scalar_t>();
      layers.dgh[l] = dgh[l].data_ptr<scalar_t>();
    }
    const auto kernel = mode == kGru       ? &stack_bwd_kernel<true, false, scalar_t>
                        : mode == kRnnRelu ? &stack_bwd_kernel<false, true, scalar_t>
                                           : &stack_bwd_kernel<false, false, scalar_t>;
    cuda::launch(kernel, persistent_blocks(B), kStackThreads, stack_bwd_smem_bytes<scalar_t>(L, H, G),
                 cuda::current_stream(), L, T, B, H, lp, go.data_ptr<scalar_t>(), g_hn.data_ptr<scalar_t>(), layers,
                 dh0.data_ptr<scalar_t>());
  });
  return std::make_tuple(dgx, dgh, dh0);
}

}  // namespace hnrnn

TORCH_LIBRARY_IMPL(hnrnn, CUDA, m) {
  m.impl("gru_recurrence", &hnrnn::gru_recurrence_cuda);
  m.impl("gru_recurrence_backward", &hnrnn::gru_recurrence_backward_cuda);
  m.impl("rnn_recurrence", &hnrnn::rnn_recurrence_cuda);
  m.impl("rnn_recurrence_backward", &hnrnn::rnn_recurrence_backward_cuda);
}
