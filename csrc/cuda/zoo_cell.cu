// CUDA kernels of the zoo cell (hnrnn::zoo_cell_forward / zoo_cell_backward).
//
// Persistent path (W and the (B, H) state fit in one SM's shared memory, H <= 128): one block
// runs the whole time loop, forward and backward, with W, h / dh and the BatchNorm statistics in
// shared memory; BatchNorm is per feature, so one thread per feature owns its statistics and
// its running statistics (in registers for all steps, written once at the end).
// Per-step path (anything larger): per step one cuBLAS GEMM plus one fused kernel (ReLU, batch
// statistics, normalisation, running update, and the next step's h + E[ids]); backward per step
// one fused BatchNorm/ReLU-backward kernel plus one GEMM dx = dz W.
// Both: after the backward loop dW = dZ^T X is one GEMM over all T*B rows, db a column sum, and
// dE a segment sum over the ids sorted once (no atomics: the same bits every run).
// skip_first_linear (the lesson's Model0): step 0 has no linear layer, r_0 = ReLU(x_0), so
// dx_0 = dz_0 and dW, db sum over the steps from 1.
// Out-of-range ids (only when the entry point's host check was skipped, under torch.compile)
// read a NaN embedding row: never memory out of bounds, never a device-side assert.
#include <torch/extension.h>

#include "../op_checks.h"
#include "launch.h"
#include "zoo_cell.h"

namespace {

using at::Tensor;
namespace zc = hnrnn::zoo;
namespace cuda = hnrnn::cuda;

constexpr int kThreads = 512;     // persistent kernels: one block per SM (__launch_bounds__(kThreads, 1)
                                  // lets them use 128 registers; the default budget of 64 spilled in fp64)
constexpr int kRowsPerThread = 8; // register tile of the in-block matrix products: 8 rows x 1 column
constexpr int kMaxPersistentH = 128;
constexpr int kColsPerBlock = 32; // per-step kernels: 32 features x 8 row lanes
constexpr int kRowLanes = 8;

template <typename scalar_t>
__device__ __forceinline__ scalar_t embedding_or_nan(const scalar_t* E, int64_t id, int64_t V, int64_t H, int k) {
  return (id >= 0 && id < V) ? E[id * H + k] : static_cast<scalar_t>(CUDART_NAN);
}

// C[b][n] (+)= sum_m A[b][m] * Bm(m, n) for all b < B, n < H, from shared memory, where
// Bm(m, n) = Bs[m * H + n]. Each thread owns kRowsPerThread rows of one column: the B-matrix
// element is loaded once per m and reused, the A elements are warp broadcasts.
template <typename scalar_t, typename F>
__device__ __forceinline__ void block_matmul(const scalar_t* A, const scalar_t* Bs, int B, int H, F&& store) {
  const int groups = (B + kRowsPerThread - 1) / kRowsPerThread;
  for (int task = threadIdx.x; task < groups * H; task += blockDim.x) {
    const int n = task % H;
    const int b0 = (task / H) * kRowsPerThread;
    scalar_t acc[kRowsPerThread];
#pragma unroll
    for (int q = 0; q < kRowsPerThread; ++q) acc[q] = scalar_t(0);
    for (int m = 0; m < H; ++m) {
      const scalar_t w = Bs[m * H + n];
#pragma unroll
      for (int q = 0; q < kRowsPerThread; ++q) {
        const int b = min(b0 + q, B - 1);  // clamped: rows past B are computed and dropped
        acc[q] += A[b * H + m] * w;
      }
    }
#pragma unroll
    for (int q = 0; q < kRowsPerThread; ++q)
      if (b0 + q < B) store(b0 + q, n, acc[q]);
  }
}

// ------------------------------------------------------------------------------------------
// Persistent forward
// ------------------------------------------------------------------------------------------
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 1) fwd_persistent_kernel(
    const int64_t* __restrict__ ids, const scalar_t* __restrict__ h0, const scalar_t* __restrict__ E,
    const scalar_t* __restrict__ W, const scalar_t* __restrict__ bias, const scalar_t* __restrict__ gamma,
    const scalar_t* __restrict__ beta, const scalar_t* __restrict__ rm_in, const scalar_t* __restrict__ rv_in,
    bool norm_state, bool training, bool skip_first_linear, scalar_t momentum, scalar_t eps, int B, int T, int H,
    int64_t V, scalar_t* __restrict__ out, scalar_t* __restrict__ hT, scalar_t* __restrict__ xs, scalar_t* __restrict__ rs,
    scalar_t* __restrict__ mean_g, scalar_t* __restrict__ invstd_g, scalar_t* __restrict__ rm_out,
    scalar_t* __restrict__ rv_out) {
  scalar_t* Wt = cuda::dynamic_shared<scalar_t>();       // Wt[k * H + j] = W[j][k]
  scalar_t* x = Wt + H * H;                              // h_{t-1}, then x_t (B x H)
  scalar_t* r = x + B * H;                               // r_t (B x H)
  scalar_t* s_mean = r + B * H;                          // (H)
  scalar_t* s_inv = s_mean + H;                          // (H)
  const int tid = threadIdx.x, nt = blockDim.x, BH = B * H;
  for (int i = tid; i < H * H; i += nt) Wt[(i % H) * H + i / H] = W[i];
  for (int i = tid; i < BH; i += nt) x[i] = h0[i];
  // Thread j < H owns feature j's running statistics, in registers for the whole loop.
  scalar_t run_mean = tid < H ? rm_in[tid] : scalar_t(0);
  scalar_t run_var = tid < H ? rv_in[tid] : scalar_t(1);
  // eval: the running statistics, constant over the loop
  if (!training && tid < H) {
    s_mean[tid] = run_mean;
    s_inv[tid] = scalar_t(1) / sqrt(run_var + eps);
  }
  __syncthreads();
  for (int t = 0; t < T; ++t) {
    for (int i = tid; i < BH; i += nt) {
      const int b = i / H, k = i % H;
      const scalar_t v = x[i] + embedding_or_nan(E, ids[b * T + t], V, H, k);
      x[i] = v;
      xs[static_cast<int64_t>(t) * BH + i] = v;
    }
    __syncthreads();
    if (t == 0 && skip_first_linear) {
      for (int i = tid; i < BH; i += nt) r[i] = zc::relu(x[i]);
    } else {
      block_matmul<scalar_t>(x, Wt, B, H, [&](int b, int j, scalar_t acc) { r[b * H + j] = zc::relu(acc + bias[j]); });
    }
    __syncthreads();
    if (training && tid < H) {  // one thread per feature: batch statistics and running update
      const int j = tid;
      scalar_t s = 0;
      for (int b = 0; b < B; ++b) s += r[b * H + j];
      const scalar_t mean = s / B;
      scalar_t ss = 0;
      for (int b = 0; b < B; ++b) {
        const scalar_t d = r[b * H + j] - mean;
        ss += d * d;
      }
      const scalar_t var = ss / B;
      s_mean[j] = mean;
      s_inv[j] = scalar_t(1) / sqrt(var + eps);
      run_mean = zc::running_update(run_mean, mean, momentum);
      run_var = zc::running_update(run_var, var * B / (B - 1), momentum);
    }
    __syncthreads();
    if (tid < H) {
      mean_g[t * H + tid] = s_mean[tid];
      invstd_g[t * H + tid] = s_inv[tid];
    }
    for (int i = tid; i < BH; i += nt) {
      const int b = i / H, k = i % H;
      const scalar_t rr = r[i];
      const scalar_t o = zc::bn_apply(rr, s_mean[k], s_inv[k], gamma[k], beta[k]);
      out[(static_cast<int64_t>(b) * T + t) * H + k] = o;
      rs[static_cast<int64_t>(t) * BH + i] = rr;
      x[i] = norm_state ? o : rr;  // h_t
    }
    __syncthreads();
  }
  for (int i = tid; i < BH; i += nt) hT[i] = x[i];
  if (tid < H) {  // the updated running statistics (in eval, a copy of the inputs)
    rm_out[tid] = run_mean;
    rv_out[tid] = run_var;
  }
}

// ------------------------------------------------------------------------------------------
// Per-step forward
// ------------------------------------------------------------------------------------------
template <typename scalar_t>
__global__ void gather_x_kernel(const int64_t* __restrict__ ids, const scalar_t* __restrict__ h, int64_t h_stride,
                                const scalar_t* __restrict__ E, scalar_t* __restrict__ x, int t, int B, int T,
                                int H, int64_t V) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(B) * H) return;
  const int b = i / H, k = i % H;
  x[i] = h[b * h_stride + k] + embedding_or_nan(E, ids[static_cast<int64_t>(b) * T + t], V, H, k);
}

// Block-wide (kColsPerBlock x kRowLanes) column sum: every lane of column tx gets the total.
template <typename scalar_t>
__device__ __forceinline__ scalar_t column_sum(scalar_t v, scalar_t (*red)[kColsPerBlock]) {
  red[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  scalar_t s = 0;
#pragma unroll
  for (int y = 0; y < kRowLanes; ++y) s += red[y][threadIdx.x];
  __syncthreads();
  return s;
}

// Step t after the GEMM r = x W^T + b: ReLU in place, batch statistics, running update,
// out_t, and (when t + 1 < T) the next step's x = h_t + E[ids_{t+1}].
template <typename scalar_t>
__global__ void fwd_step_kernel(const int64_t* __restrict__ ids, const scalar_t* __restrict__ E,
                                const scalar_t* __restrict__ gamma, const scalar_t* __restrict__ beta,
                                scalar_t* rm, scalar_t* rv, bool norm_state, bool training, scalar_t momentum,
                                scalar_t eps, int t, int B, int T, int H, int64_t V, scalar_t* __restrict__ r,
                                scalar_t* __restrict__ out, scalar_t* __restrict__ x_next,
                                scalar_t* __restrict__ mean_g, scalar_t* __restrict__ invstd_g) {
  __shared__ scalar_t red[kRowLanes][kColsPerBlock];
  const int j = blockIdx.x * kColsPerBlock + threadIdx.x;
  const bool col = j < H;
  scalar_t s = 0;
  for (int b = threadIdx.y; b < B && col; b += kRowLanes) {
    const scalar_t v = zc::relu(r[b * H + j]);
    r[b * H + j] = v;
    s += v;
  }
  scalar_t mean, invstd;
  if (training) {
    mean = column_sum(s, red) / B;
    scalar_t ss = 0;
    for (int b = threadIdx.y; b < B && col; b += kRowLanes) {
      const scalar_t d = r[b * H + j] - mean;
      ss += d * d;
    }
    const scalar_t var = column_sum(ss, red) / B;
    invstd = scalar_t(1) / sqrt(var + eps);
    if (col && threadIdx.y == 0) {
      rm[j] = zc::running_update(rm[j], mean, momentum);
      rv[j] = zc::running_update(rv[j], var * B / (B - 1), momentum);
    }
  } else {
    mean = col ? rm[j] : scalar_t(0);
    invstd = col ? scalar_t(1) / sqrt(rv[j] + eps) : scalar_t(0);
  }
  if (!col) return;
  if (threadIdx.y == 0) {
    mean_g[t * H + j] = mean;
    invstd_g[t * H + j] = invstd;
  }
  for (int b = threadIdx.y; b < B; b += kRowLanes) {
    const scalar_t rr = r[b * H + j];
    const scalar_t o = zc::bn_apply(rr, mean, invstd, gamma[j], beta[j]);
    out[(static_cast<int64_t>(b) * T + t) * H + j] = o;
    if (t + 1 < T)
      x_next[b * H + j] = (norm_state ? o : rr) + embedding_or_nan(E, ids[static_cast<int64_t>(b) * T + t + 1], V, H, j);
  }
}

// ------------------------------------------------------------------------------------------
// Persistent backward
// ------------------------------------------------------------------------------------------
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 1) bwd_persistent_kernel(
    const scalar_t* __restrict__ gout, const scalar_t* __restrict__ ghT, const scalar_t* __restrict__ W,
    const scalar_t* __restrict__ gamma, const scalar_t* __restrict__ rs, const scalar_t* __restrict__ mean_g,
    const scalar_t* __restrict__ invstd_g, bool norm_state, bool training, bool skip_first_linear, int B, int T,
    int H, scalar_t* __restrict__ gz_g, scalar_t* __restrict__ gx_g, scalar_t* __restrict__ gh0,
    scalar_t* __restrict__ dgamma, scalar_t* __restrict__ dbeta) {
  scalar_t* Ws = cuda::dynamic_shared<scalar_t>();       // W[j][k], row-major
  scalar_t* g = Ws + H * H;                              // gradient reaching out_t, then dz_t (B x H)
  scalar_t* gh = g + B * H;                              // gradient w.r.t. h_t (B x H)
  scalar_t* sg = gh + B * H;                             // (H)
  scalar_t* sgx = sg + H;                                // (H)
  const int tid = threadIdx.x, nt = blockDim.x, BH = B * H;
  for (int i = tid; i < H * H; i += nt) Ws[i] = W[i];
  for (int i = tid; i < BH; i += nt) gh[i] = ghT[i];
  scalar_t acc_gamma = 0, acc_beta = 0;  // thread j < H owns feature j
  const scalar_t inv_n = scalar_t(1) / B;
  __syncthreads();
  for (int t = T - 1; t >= 0; --t) {
    const scalar_t* r = rs + static_cast<int64_t>(t) * BH;
    for (int i = tid; i < BH; i += nt) {
      const int b = i / H, k = i % H;
      const scalar_t go = gout[(static_cast<int64_t>(b) * T + t) * H + k];
      g[i] = norm_state ? go + gh[i] : go;
    }
    __syncthreads();
    if (tid < H) {
      const int j = tid;
      const scalar_t m = mean_g[t * H + j], inv = invstd_g[t * H + j];
      scalar_t s = 0, sx = 0;
      for (int b = 0; b < B; ++b) {
        const scalar_t gg = g[b * H + j];
        s += gg;
        sx += gg * ((r[b * H + j] - m) * inv);
      }
      sg[j] = s;
      sgx[j] = sx;
      acc_gamma += sx;
      acc_beta += s;
    }
    __syncthreads();
    for (int i = tid; i < BH; i += nt) {
      const int k = i % H;
      const scalar_t gz = zc::bn_relu_backward(g[i], norm_state ? scalar_t(0) : gh[i], r[i], mean_g[t * H + k],
                                               invstd_g[t * H + k], gamma[k], sg[k], sgx[k], inv_n, training);
      g[i] = gz;
      gz_g[static_cast<int64_t>(t) * BH + i] = gz;
    }
    __syncthreads();
    scalar_t* gx_t = gx_g + static_cast<int64_t>(t) * BH;
    if (t == 0 && skip_first_linear) {  // r_0 = ReLU(x_0): dx_0 = dz_0
      for (int i = tid; i < BH; i += nt) {
        gh[i] = g[i];
        gx_t[i] = g[i];
      }
    } else {
      block_matmul<scalar_t>(g, Ws, B, H, [&](int b, int k, scalar_t acc) {  // dx_t = dz_t W
        gh[b * H + k] = acc;
        gx_t[b * H + k] = acc;
      });
    }
    __syncthreads();
  }
  for (int i = tid; i < BH; i += nt) gh0[i] = gh[i];
  if (tid < H) {
    dgamma[tid] = acc_gamma;
    dbeta[tid] = acc_beta;
  }
}

// ------------------------------------------------------------------------------------------
// Per-step backward: dz_t for a block of features; dgamma / dbeta accumulated by their owner.
// ------------------------------------------------------------------------------------------
template <typename scalar_t>
__global__ void bwd_step_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ gh,
                                const scalar_t* __restrict__ r, const scalar_t* __restrict__ mean_g,
                                const scalar_t* __restrict__ invstd_g, const scalar_t* __restrict__ gamma,
                                bool norm_state, bool training, int t, int B, int T, int H,
                                scalar_t* __restrict__ gz, scalar_t* dgamma, scalar_t* dbeta) {
  __shared__ scalar_t red[kRowLanes][kColsPerBlock];
  const int j = blockIdx.x * kColsPerBlock + threadIdx.x;
  const bool col = j < H;
  const scalar_t m = col ? mean_g[t * H + j] : scalar_t(0);
  const scalar_t inv = col ? invstd_g[t * H + j] : scalar_t(0);
  scalar_t s = 0, sx = 0;
  for (int b = threadIdx.y; b < B && col; b += kRowLanes) {
    const scalar_t go = gout[(static_cast<int64_t>(b) * T + t) * H + j];
    const scalar_t gg = norm_state ? go + gh[b * H + j] : go;
    s += gg;
    sx += gg * ((r[b * H + j] - m) * inv);
  }
  s = column_sum(s, red);
  sx = column_sum(sx, red);
  if (!col) return;
  if (threadIdx.y == 0) {
    dgamma[j] += sx;
    dbeta[j] += s;
  }
  const scalar_t inv_n = scalar_t(1) / B;
  for (int b = threadIdx.y; b < B; b += kRowLanes) {
    const scalar_t go = gout[(static_cast<int64_t>(b) * T + t) * H + j];
    const scalar_t ghv = gh[b * H + j];
    gz[b * H + j] = zc::bn_relu_backward(norm_state ? go + ghv : go, norm_state ? scalar_t(0) : ghv, r[b * H + j], m,
                                         inv, gamma[j], s, sx, inv_n, training);
  }
}

// dst[v] = sum over i in [offsets[v], offsets[v+1]) of src[order[i]], in order (deterministic).
template <typename scalar_t>
__global__ void segment_sum_kernel(const scalar_t* __restrict__ src, const int64_t* __restrict__ order,
                                   const int64_t* __restrict__ offsets, scalar_t* __restrict__ dst, int H) {
  const int v = blockIdx.x;
  const int k = blockIdx.y * blockDim.x + threadIdx.x;
  if (k >= H) return;
  scalar_t acc = 0;
  for (int64_t i = offsets[v]; i < offsets[v + 1]; ++i) acc += src[order[i] * H + k];
  dst[static_cast<int64_t>(v) * H + k] = acc;
}

// ------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------
size_t persistent_smem_bytes(int64_t B, int64_t H, size_t elem) { return (H * H + 2 * B * H + 2 * H) * elem; }

bool use_persistent(int64_t B, int64_t H, size_t elem, int device) {
  return H <= kMaxPersistentH &&
         static_cast<int64_t>(persistent_smem_bytes(B, H, elem)) <= cuda::max_dynamic_smem(device);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> zoo_cell_forward_cuda(
    const Tensor& ids, const Tensor& h0, const Tensor& emb, const Tensor& weight, const Tensor& bias,
    const Tensor& bn_weight, const Tensor& bn_bias, const Tensor& running_mean, const Tensor& running_var,
    bool norm_state, bool training, double momentum, double eps, bool skip_first_linear) {
  hnrnn::zoo::check_forward_inputs(ids, h0, emb, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                   training);
  const int64_t B = ids.size(0), T = ids.size(1), H = h0.size(1), V = emb.size(0);
  const cuda::DeviceGuard guard(h0.device());
  const auto stream = cuda::current_stream();
  auto out = hnrnn::empty_output({B, T, H}, h0.options());
  auto xs = hnrnn::empty_output({T, B, H}, h0.options());
  auto rs = hnrnn::empty_output({T, B, H}, h0.options());
  auto mean = hnrnn::empty_output({T, H}, h0.options());
  auto invstd = hnrnn::empty_output({T, H}, h0.options());
  Tensor hT, rm, rv;
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "zoo_cell_forward_cuda", [&] {
    const auto mom = static_cast<scalar_t>(momentum);
    const auto ep = static_cast<scalar_t>(eps);
    if (use_persistent(B, H, sizeof(scalar_t), h0.get_device())) {
      hT = hnrnn::empty_output({B, H}, h0.options());
      rm = hnrnn::empty_output({H}, h0.options());  // written by the kernel: no copies of the inputs
      rv = hnrnn::empty_output({H}, h0.options());
      cuda::launch(
          fwd_persistent_kernel<scalar_t>, 1, kThreads, persistent_smem_bytes(B, H, sizeof(scalar_t)), stream,
          ids.data_ptr<int64_t>(), h0.data_ptr<scalar_t>(), emb.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
          bias.data_ptr<scalar_t>(), bn_weight.data_ptr<scalar_t>(), bn_bias.data_ptr<scalar_t>(),
          running_mean.data_ptr<scalar_t>(), running_var.data_ptr<scalar_t>(), norm_state, training,
          skip_first_linear, mom, ep, B, T, H, V, out.data_ptr<scalar_t>(), hT.data_ptr<scalar_t>(), xs.data_ptr<scalar_t>(), rs.data_ptr<scalar_t>(),
          mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>(), rm.data_ptr<scalar_t>(), rv.data_ptr<scalar_t>());
      return;
    }
    rm = running_mean.clone();  // the per-step kernels update these step by step
    rv = running_var.clone();
    const int64_t BH = B * H;
    if (BH > 0) {  // a grid of zero blocks is an invalid launch
      cuda::launch(gather_x_kernel<scalar_t>, (BH + 255) / 256, 256, 0, stream, ids.data_ptr<int64_t>(),
                   h0.data_ptr<scalar_t>(), H, emb.data_ptr<scalar_t>(), xs.data_ptr<scalar_t>(), 0, B, T, H, V);
    }
    const auto wt = weight.t();
    const dim3 block(kColsPerBlock, kRowLanes), grid((H + kColsPerBlock - 1) / kColsPerBlock);
    for (int64_t t = 0; t < T; ++t) {
      auto r_t = rs.select(0, t);
      if (t == 0 && skip_first_linear)
        r_t.copy_(xs.select(0, 0));
      else
        at::addmm_out(r_t, bias, xs.select(0, t), wt);  // cuBLAS
      cuda::launch(
          fwd_step_kernel<scalar_t>, grid, block, 0, stream, ids.data_ptr<int64_t>(), emb.data_ptr<scalar_t>(), bn_weight.data_ptr<scalar_t>(),
          bn_bias.data_ptr<scalar_t>(), rm.data_ptr<scalar_t>(), rv.data_ptr<scalar_t>(), norm_state, training, mom,
          ep, t, B, T, H, V, r_t.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          t + 1 < T ? xs.select(0, t + 1).data_ptr<scalar_t>() : nullptr, mean.data_ptr<scalar_t>(),
          invstd.data_ptr<scalar_t>());
    }
    hT = (norm_state ? out.select(1, T - 1) : rs.select(0, T - 1)).clone();
  });
  return {out, hT, rm, rv, xs, rs, mean, invstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> zoo_cell_backward_cuda(
    const Tensor& grad_out, const Tensor& grad_hT, const Tensor& ids, int64_t vocab_size, const Tensor& weight,
    const Tensor& bn_weight, const Tensor& xs, const Tensor& rs, const Tensor& mean, const Tensor& invstd,
    bool norm_state, bool training, bool skip_first_linear) {
  hnrnn::zoo::check_backward_inputs(grad_out, grad_hT, ids, weight, bn_weight, xs, rs, mean, invstd);
  const int64_t B = ids.size(0), T = ids.size(1), H = weight.size(0);
  const cuda::DeviceGuard guard(weight.device());
  const auto stream = cuda::current_stream();
  auto opts = weight.options();
  auto gz = hnrnn::empty_output({T, B, H}, opts);
  auto gx = hnrnn::empty_output({T, B, H}, opts);
  auto dgamma = at::zeros({H}, opts);
  auto dbeta = at::zeros({H}, opts);
  Tensor gh0;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "zoo_cell_backward_cuda", [&] {
    if (use_persistent(B, H, sizeof(scalar_t), weight.get_device())) {
      gh0 = hnrnn::empty_output({B, H}, opts);
      cuda::launch(
          bwd_persistent_kernel<scalar_t>, 1, kThreads, persistent_smem_bytes(B, H, sizeof(scalar_t)), stream,
          grad_out.data_ptr<scalar_t>(), grad_hT.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
          bn_weight.data_ptr<scalar_t>(), rs.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
          invstd.data_ptr<scalar_t>(), norm_state, training, skip_first_linear, B, T, H, gz.data_ptr<scalar_t>(),
          gx.data_ptr<scalar_t>(), gh0.data_ptr<scalar_t>(), dgamma.data_ptr<scalar_t>(), dbeta.data_ptr<scalar_t>());
      return;
    }
    const dim3 block(kColsPerBlock, kRowLanes), grid((H + kColsPerBlock - 1) / kColsPerBlock);
    for (int64_t t = T - 1; t >= 0; --t) {
      const Tensor gh = t == T - 1 ? grad_hT : gx.select(0, t + 1);
      cuda::launch(
          bwd_step_kernel<scalar_t>, grid, block, 0, stream, grad_out.data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(), rs.select(0, t).data_ptr<scalar_t>(),
          mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>(), bn_weight.data_ptr<scalar_t>(), norm_state,
          training, t, B, T, H, gz.select(0, t).data_ptr<scalar_t>(), dgamma.data_ptr<scalar_t>(),
          dbeta.data_ptr<scalar_t>());
      auto gx_t = gx.select(0, t);
      if (t == 0 && skip_first_linear)
        gx_t.copy_(gz.select(0, 0));
      else
        at::mm_out(gx_t, gz.select(0, t), weight);  // dx_t = dz_t W (cuBLAS)
    }
    gh0 = gx.select(0, 0).clone();
  });
  // After the loop: the reductions over all T*B rows (from step 1 on with skip_first_linear).
  const int64_t first = skip_first_linear ? 1 : 0;
  const int64_t rows = (T - first) * B;
  auto grad_w = at::mm(gz.narrow(0, first, T - first).view({rows, H}).t(), xs.narrow(0, first, T - first).view({rows, H}));
  auto grad_b = gz.narrow(0, first, T - first).sum(at::IntArrayRef({0, 1}));
  auto flat = ids.t().reshape({-1});  // time-major, like gx's rows
  auto sorted = at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto offsets = at::searchsorted(std::get<0>(sorted), at::arange(vocab_size + 1, ids.options()));
  auto grad_emb = hnrnn::empty_output({vocab_size, H}, opts);
  if (vocab_size > 0 && H > 0) {  // (a grid of zero blocks is an invalid launch)
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "zoo_cell_segment_sum", [&] {
      const dim3 grid(vocab_size, (H + 127) / 128);
      cuda::launch(segment_sum_kernel<scalar_t>, grid, 128, 0, stream, gx.data_ptr<scalar_t>(),
                   std::get<1>(sorted).data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
                   grad_emb.data_ptr<scalar_t>(), H);
    });
  }
  return {gh0, grad_emb, grad_w, grad_b, dgamma, dbeta};
}

}  // namespace

TORCH_LIBRARY_IMPL(hnrnn, CUDA, m) {
  m.impl("zoo_cell_forward", &zoo_cell_forward_cuda);
  m.impl("zoo_cell_backward", &zoo_cell_backward_cuda);
}
