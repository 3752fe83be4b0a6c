// CUDA kernels of the GRU / vanilla-RNN recurrences (one layer, one direction).
//
// Two paths, same results and the same workspace layout as the CPU kernels (csrc/cpu/rnn.cpp):
//  * persistent: when W_hh fits in one SM's shared memory (H up to ~128 in fp32 on H100),
//    one launch runs the whole time loop. Each block owns kRows batch rows, loads W_hh into
//    shared memory once and keeps its state there; per step: the recurrent mat-vec from
//    shared memory, then the fused gate math. Backward likewise keeps dh on chip and only
//    does dh_prev = dh * z + dG_h W_hh per step.
//  * per step: otherwise, one cuBLAS GEMM (at::mm_out / addmm_) plus one fused pointwise
//    kernel per step.
// fp32 / fp64, and fp16 / bf16 with fp32 state and accumulation (at::opmath_type).
// Gate math: rnn_math.h, shared with the CPU kernels.
#include <torch/extension.h>

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "../op_checks.h"
#include "rnn_math.h"

namespace hnrnn {
namespace {

constexpr int kThreads = 256;
constexpr int kRows = 8;  // batch rows per block in the persistent kernels

// ---------------------------------------------------------------- per-element gate math
// Forward of unit j of one batch row; returns the new state. Masked (inactive) rows output
// 0, keep the state and leave zeros / the state in the workspace.
template <bool GRU, bool RELU, typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t fwd_element(bool active, int64_t H, int64_t j, const scalar_t* gx,
                                             const acc_t* gh, const scalar_t* bias, acc_t hp,
                                             scalar_t* out, scalar_t* ws) {
  if (GRU) {
    const acc_t bh_r = bias ? acc_t(bias[j]) : acc_t(0);
    const acc_t bh_z = bias ? acc_t(bias[H + j]) : acc_t(0);
    const acc_t bh_n = bias ? acc_t(bias[2 * H + j]) : acc_t(0);
    const acc_t gh_n = gh[2 * H + j] + bh_n;
    if (!active) {
      ws[j] = ws[H + j] = ws[2 * H + j] = ws[3 * H + j] = scalar_t(0);
      ws[4 * H + j] = scalar_t(hp);
      out[j] = scalar_t(0);
      return hp;
    }
    GruGates<acc_t> g = gru_forward<acc_t>(acc_t(gx[j]), acc_t(gx[H + j]), acc_t(gx[2 * H + j]),
                                           gh[j] + bh_r, gh[H + j] + bh_z, gh_n, hp);
    ws[j] = scalar_t(g.r);
    ws[H + j] = scalar_t(g.z);
    ws[2 * H + j] = scalar_t(g.n);
    ws[3 * H + j] = scalar_t(gh_n);
    ws[4 * H + j] = scalar_t(hp);
    out[j] = scalar_t(g.h);
    return g.h;
  } else {
    if (!active) {
      ws[j] = scalar_t(0);
      ws[H + j] = scalar_t(hp);
      out[j] = scalar_t(0);
      return hp;
    }
    const acc_t pre = acc_t(gx[j]) + gh[j] + (bias ? acc_t(bias[j]) : acc_t(0));
    const acc_t h = rnn_forward<acc_t>(pre, RELU);
    ws[j] = scalar_t(h);
    ws[H + j] = scalar_t(hp);
    out[j] = scalar_t(h);
    return h;
  }
}

// Backward of unit j of one batch row. dh: the gradient carried from step t+1. Writes the
// gate gradients (dgx: input gates, dgh: recurrent gates; the same tensor for the RNN) and
// returns the direct part of dh_prev (the W_hh^T part is added by the caller).
template <bool GRU, bool RELU, typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t bwd_element(bool active, int64_t H, int64_t j, acc_t dh, const scalar_t* go,
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
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* h_s = reinterpret_cast<acc_t*>(smem_raw);               // [kRows][H] state
  acc_t* gh_s = h_s + kRows * H;                                  // [kRows][GH] recurrent gates
  scalar_t* wt_s = reinterpret_cast<scalar_t*>(gh_s + kRows * GH);  // [H][GH]: wt_s[k][row] = W[row][k]
  const int64_t b0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t nb = B - b0 < kRows ? B - b0 : kRows;

  for (int64_t i = threadIdx.x; i < GH * H; i += blockDim.x) {
    const int64_t row = i / H, k = i % H;
    wt_s[k * GH + row] = w[i];
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
        const acc_t wv = acc_t(wt_s[k * GH + row]);
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
                                                       bias, h_s[i], out + r * H, ws + r * (GRU ? 5 : 2) * H);
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
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* dh_s = reinterpret_cast<acc_t*>(smem_raw);    // [kRows][H] carried gradient
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
                                                         ws + r * (GRU ? 5 : 2) * H, dgx + r * GH,
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

// ---------------------------------------------------------------- per-step kernels
// One thread per (row, unit): gather the unit's entries into compact vectors and run the
// shared element code on them with H = 1, j = 0, then scatter the results.
template <bool GRU, bool RELU, typename scalar_t>
__global__ void step_fwd_kernel(int64_t B, int64_t H, int64_t t, const int64_t* __restrict__ len,
                                const scalar_t* __restrict__ gx_t, const scalar_t* __restrict__ gh,
                                const scalar_t* __restrict__ bias, scalar_t* __restrict__ h,
                                scalar_t* __restrict__ out_t, scalar_t* __restrict__ ws_t) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = GRU ? 3 : 1;
  constexpr int W = GRU ? 5 : 2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * H) return;
  const int64_t b = i / H, j = i % H;
  acc_t gh_v[3];
  scalar_t gx_v[3], b_v[3], ws_v[5], out_v;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    gh_v[g] = acc_t(gh[b * G * H + g * H + j]);
    gx_v[g] = gx_t[b * G * H + g * H + j];
    b_v[g] = bias ? bias[g * H + j] : scalar_t(0);
  }
  const acc_t hn = fwd_element<GRU, RELU, acc_t, scalar_t>(is_active(len, b, t), 1, 0, gx_v, gh_v, b_v,
                                                           acc_t(h[i]), &out_v, ws_v);
#pragma unroll
  for (int k = 0; k < W; ++k) ws_t[b * W * H + k * H + j] = ws_v[k];
  out_t[i] = out_v;
  h[i] = scalar_t(hn);
}

template <bool GRU, bool RELU, typename scalar_t>
__global__ void step_bwd_kernel(int64_t B, int64_t H, int64_t t, const int64_t* __restrict__ len,
                                const scalar_t* __restrict__ dh, const scalar_t* __restrict__ go_t,
                                const scalar_t* __restrict__ ws_t, scalar_t* __restrict__ dgx_t,
                                scalar_t* __restrict__ dgh_t, scalar_t* __restrict__ dprev) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int G = GRU ? 3 : 1;
  constexpr int W = GRU ? 5 : 2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * H) return;
  const int64_t b = i / H, j = i % H;
  // gather unit j's workspace entries into a compact vector (H' = 1, j' = 0)
  scalar_t ws_v[W], dgx_v[3], dgh_v[3], go_v = go_t[i];
#pragma unroll
  for (int k = 0; k < W; ++k) ws_v[k] = ws_t[b * W * H + k * H + j];
  acc_t g3[3];
  const acc_t d = bwd_element<GRU, RELU, acc_t, scalar_t>(is_active(len, b, t), 1, 0, acc_t(dh[i]), &go_v, ws_v,
                                                          dgx_v, dgh_v, g3);
#pragma unroll
  for (int g = 0; g < G; ++g) {
    dgx_t[b * G * H + g * H + j] = dgx_v[g];
    if (GRU) dgh_t[b * G * H + g * H + j] = dgh_v[g];
  }
  dprev[i] = scalar_t(d);
}

// ---------------------------------------------------------------- host side
int64_t max_smem_optin(int device) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return v;
}

template <typename scalar_t>
size_t fwd_smem_bytes(int64_t H, int G) {
  using acc_t = at::opmath_type<scalar_t>;
  return (kRows * H + kRows * G * H) * sizeof(acc_t) + G * H * H * sizeof(scalar_t);
}
template <typename scalar_t>
size_t bwd_smem_bytes(int64_t H, int G) {
  using acc_t = at::opmath_type<scalar_t>;
  return (2 * kRows * H + kRows * G * H) * sizeof(acc_t) + G * H * H * sizeof(scalar_t);
}

template <typename Kernel, typename... Args>
void launch_persistent(Kernel kernel, size_t smem, int64_t B, cudaStream_t stream, Args... args) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const int blocks = static_cast<int>((B + kRows - 1) / kRows);
  kernel<<<blocks, kThreads, smem, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

c10::optional<at::Tensor> device_lengths(const c10::optional<at::Tensor>& lengths, const at::Tensor& like) {
  if (!lengths.has_value()) return c10::nullopt;
  return lengths->to(like.device(), at::kLong).contiguous();
}

template <bool GRU, bool RELU>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(const at::Tensor& gates_x_, const at::Tensor& h0_,
                                                            const at::Tensor& w_hh_,
                                                            const c10::optional<at::Tensor>& b_hh, bool reverse,
                                                            const c10::optional<at::Tensor>& lengths) {
  constexpr int G = GRU ? 3 : 1;
  check_recurrence_inputs(gates_x_, h0_, w_hh_, b_hh, lengths, G);
  c10::cuda::CUDAGuard guard(gates_x_.device());
  const at::Tensor gates_x = gates_x_.contiguous(), h0 = h0_.contiguous(), w_hh = w_hh_.contiguous();
  const at::Tensor bias = b_hh.has_value() ? b_hh->contiguous() : at::Tensor();
  const auto len = device_lengths(lengths, gates_x);
  const int64_t T = gates_x.size(0), B = gates_x.size(1), H = h0.size(1);
  at::Tensor out = empty_output({T, B, H}, h0.options());
  at::Tensor ws = empty_output({T, B, (GRU ? 5 : 2) * H}, h0.options());
  at::Tensor h_n = empty_output({B, H}, h0.options());
  if (T == 0 || B == 0) return std::make_tuple(out, h0.clone(), ws);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* lp = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h0.scalar_type(), "hnrnn_recurrence_cuda", [&] {
    const scalar_t* bp = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    const size_t smem = fwd_smem_bytes<scalar_t>(H, G);
    if (static_cast<int64_t>(smem) <= max_smem_optin(gates_x.get_device())) {
      launch_persistent(persistent_fwd_kernel<GRU, RELU, scalar_t>, smem, B, stream, T, B, H, reverse, lp,
                        gates_x.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), bp,
                        out.data_ptr<scalar_t>(), h_n.data_ptr<scalar_t>(), ws.data_ptr<scalar_t>());
    } else {
      h_n.copy_(h0);  // the running state
      at::Tensor gh = empty_output({B, G * H}, h0.options());
      const at::Tensor w_t = w_hh.t();
      const int blocks = static_cast<int>((B * H + kThreads - 1) / kThreads);
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = reverse ? T - 1 - s : s;
        at::mm_out(gh, h_n, w_t);
        step_fwd_kernel<GRU, RELU, scalar_t><<<blocks, kThreads, 0, stream>>>(
            B, H, t, lp, gates_x.data_ptr<scalar_t>() + t * B * G * H, gh.data_ptr<scalar_t>(), bp,
            h_n.data_ptr<scalar_t>(), out.data_ptr<scalar_t>() + t * B * H,
            ws.data_ptr<scalar_t>() + t * B * (GRU ? 5 : 2) * H);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  check_recurrence_backward_inputs(grad_out_, grad_h_n_, ws_, w_hh_, lengths, G, GRU ? 5 : 2);
  c10::cuda::CUDAGuard guard(grad_out_.device());
  const at::Tensor grad_out = grad_out_.contiguous(), grad_h_n = grad_h_n_.contiguous();
  const at::Tensor ws = ws_.contiguous(), w_hh = w_hh_.contiguous();
  const int64_t T = grad_out.size(0), B = grad_out.size(1), H = grad_out.size(2);
  const auto len = device_lengths(lengths, grad_out);
  at::Tensor dgx = empty_output({T, B, G * H}, grad_out.options());
  at::Tensor dgh = GRU ? empty_output({T, B, G * H}, grad_out.options()) : dgx;
  at::Tensor dh0 = empty_output({B, H}, grad_out.options());
  if (T == 0 || B == 0) return std::make_tuple(dgx, dgh, grad_h_n.clone());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* lp = len.has_value() ? len->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "hnrnn_recurrence_backward_cuda",
                                  [&] {
    const size_t smem = bwd_smem_bytes<scalar_t>(H, G);
    if (static_cast<int64_t>(smem) <= max_smem_optin(grad_out.get_device())) {
      launch_persistent(persistent_bwd_kernel<GRU, RELU, scalar_t>, smem, B, stream, T, B, H, reverse, lp,
                        grad_out.data_ptr<scalar_t>(), grad_h_n.data_ptr<scalar_t>(), ws.data_ptr<scalar_t>(),
                        w_hh.data_ptr<scalar_t>(), dgx.data_ptr<scalar_t>(), dgh.data_ptr<scalar_t>(),
                        dh0.data_ptr<scalar_t>());
    } else {
      dh0.copy_(grad_h_n);  // the carried gradient
      at::Tensor dprev = empty_output({B, H}, grad_out.options());
      const int blocks = static_cast<int>((B * H + kThreads - 1) / kThreads);
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = reverse ? T - 1 - s : s;
        step_bwd_kernel<GRU, RELU, scalar_t><<<blocks, kThreads, 0, stream>>>(
            B, H, t, lp, dh0.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>() + t * B * H,
            ws.data_ptr<scalar_t>() + t * B * (GRU ? 5 : 2) * H, dgx.data_ptr<scalar_t>() + t * B * G * H,
            dgh.data_ptr<scalar_t>() + t * B * G * H, dprev.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        dprev.addmm_(dgh[t], w_hh);  // dh_prev += dG_h W_hh
        dh0.copy_(dprev);
      }
    }
  });
  return std::make_tuple(dgx, dgh, dh0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_recurrence_cuda(const at::Tensor& gates_x, const at::Tensor& h0,
                                                                   const at::Tensor& w_hh,
                                                                   const c10::optional<at::Tensor>& b_hh, bool reverse,
                                                                   const c10::optional<at::Tensor>& lengths) {
  return forward_impl<true, false>(gates_x, h0, w_hh, b_hh, reverse, lengths);
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
                                                                   const c10::optional<at::Tensor>& lengths) {
  return relu ? forward_impl<false, true>(gates_x, h0, w_hh, b_hh, reverse, lengths)
              : forward_impl<false, false>(gates_x, h0, w_hh, b_hh, reverse, lengths);
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
}  // namespace hnrnn

TORCH_LIBRARY_IMPL(hnrnn, CUDA, m) {
  m.impl("gru_recurrence", &hnrnn::gru_recurrence_cuda);
  m.impl("gru_recurrence_backward", &hnrnn::gru_recurrence_backward_cuda);
  m.impl("rnn_recurrence", &hnrnn::rnn_recurrence_cuda);
  m.impl("rnn_recurrence_backward", &hnrnn::rnn_recurrence_backward_cuda);
}
