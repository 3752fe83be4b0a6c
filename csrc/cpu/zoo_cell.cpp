// CPU kernels of the zoo cell (hnrnn::zoo_cell_forward / zoo_cell_backward).
//
// Forward, per step: one gather-add pass (x = h + E[ids]), one small GEMM (small_gemm.h: at
// 64 x 64 a BLAS call costs more in threading and dispatch than in arithmetic; none at step 0
// with skip_first_linear, where r = ReLU(x), and dx = dz there in backward), one pass for
// ReLU + column sums, one for the variance, one that normalises into `out`. Backward, per
// step: one pass for the BN column sums, one that writes dz, one GEMM dx = dz W; after the
// loop dW = dZ^T X is a single GEMM over all T*B rows (its output rows split across threads),
// db a column sum, and dE a sequential scatter-add (deterministic).
// Both time loops split the batch rows across a team of threads (forward_rows, backward_rows)
// that meets at a barrier wherever BatchNorm needs the whole batch's sums.
// Every buffer is allocated once per call.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#include <vector>

// The row loops must auto-vectorise; the ReLU select only if-converts when GCC may assume FP
// operations do not trap (set before the inline helpers below are defined).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "../op_checks.h"
#include "cpu_common.h"
#include "small_gemm.h"
#include "zoo_cell.h"

namespace {

using at::Tensor;
namespace zc = hnrnn::zoo;

// Row kernels: every inner loop of the cell is one of these, over the H features of one row.
// Pointer parameters declared __restrict__ so the compiler vectorises them.
template <typename T>
HNRNN_INLINE void row_gather(T* __restrict__ x, T* __restrict__ r, const T* __restrict__ h, const T* __restrict__ e,
                       const T* __restrict__ bias, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    x[k] = h[k] + e[k];
    r[k] = bias[k];
  }
}
template <typename T>
HNRNN_INLINE void row_relu_sum(T* __restrict__ r, T* __restrict__ s, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const T v = zc::relu(r[k]);
    r[k] = v;
    s[k] += v;
  }
}
template <typename T>
HNRNN_INLINE void row_sq_dev(const T* __restrict__ r, const T* __restrict__ mean, T* __restrict__ s, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const T d = r[k] - mean[k];
    s[k] += d * d;
  }
}
// o = r * scale + shift, the form of torch's CPU batch norm (so inf weights give NaN where its do)
template <typename T>
HNRNN_INLINE void row_normalise(T* __restrict__ o, const T* __restrict__ r, const T* __restrict__ scale,
                                const T* __restrict__ shift, int64_t n) {
  for (int64_t k = 0; k < n; ++k) o[k] = r[k] * scale[k] + shift[k];
}
// g = gout (+ gh when the state is normalised); sums of g and g * xhat.
template <bool kAddState, typename T>
HNRNN_INLINE void row_bn_grad_sums(T* __restrict__ g, const T* __restrict__ go, const T* __restrict__ gh,
                             const T* __restrict__ r, const T* __restrict__ mean, const T* __restrict__ invstd,
                             T* __restrict__ sg, T* __restrict__ sgx, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const T v = kAddState ? go[k] + gh[k] : go[k];
    g[k] = v;
    sg[k] += v;
    sgx[k] += v * ((r[k] - mean[k]) * invstd[k]);
  }
}
// dz = ReLU'(r) * (ca * (g - cc - cd * (r - mean)) + gh_direct): ca = gamma * invstd; cc and cd
// are the batch-statistics terms of training, left out in eval (where 0 * (r - mean) would turn
// a NaN r into a NaN dz). Factored as torch's batch-norm backward, so that an inf gamma gives
// inf and NaN where nn.BatchNorm1d's gradients have them.
template <bool kDirect, bool kTraining, typename T>
HNRNN_INLINE void row_dz(T* __restrict__ dz, const T* __restrict__ g, const T* __restrict__ gh, const T* __restrict__ r,
                   const T* __restrict__ mean, const T* __restrict__ ca, const T* __restrict__ cc,
                   const T* __restrict__ cd, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    T d = kTraining ? ca[k] * (g[k] - cc[k] - cd[k] * (r[k] - mean[k])) : ca[k] * g[k];
    if (kDirect) d += gh[k];
    dz[k] = r[k] <= T(0) ? T(0) : d;  // as zc::bn_relu_backward
  }
}
template <typename T>
HNRNN_INLINE void row_add(T* __restrict__ dst, const T* __restrict__ src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] += src[k];
}

void check_ids(const Tensor& ids, int64_t V) {
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0, n = ids.numel(); i < n; ++i) {
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < V, "zoo_cell: ids must be in [0, ", V,
                      ") (the embedding's rows), found ", p[i]);
  }
}

// out = the sum of the n rows of parts (row stride `stride`), added in row order.
template <typename T>
HNRNN_INLINE void column_total(T* __restrict__ out, const T* parts, int64_t n, int64_t stride, int64_t H) {
  std::fill(out, out + H, T(0));
  for (int64_t i = 0; i < n; ++i) row_add(out, parts + i * stride, H);
}

// How many threads a (B, H) zoo cell splits its batch across: up to one per row block, but
// BatchNorm couples the rows, so the team meets at barriers every step (twice in forward, once
// in backward), which pays only with enough work per step.
inline int64_t team_for(int64_t B, int64_t H) {
  const int64_t blocks = (B + hnrnn::cpu::kRowsPerTask - 1) / hnrnn::cpu::kRowsPerTask;
  return B * H * H >= (int64_t(1) << 15) ? blocks : 1;
}

// What one thread of the forward team reads and writes (run_team's threads share all of it).
template <typename scalar_t>
struct ForwardArgs {
  const int64_t* ids;
  const scalar_t *h0, *E, *W_t, *bias, *gamma, *beta, *rm_in, *rv_in;
  scalar_t *rm, *rv;
  bool norm_state, training, skip_first_linear;
  scalar_t momentum, eps;
  int64_t B, T, H, blocks;
  scalar_t *out, *hT, *xs, *rs, *mean, *invstd;
  scalar_t *part_sum, *part_sq;  // per row block: column sums of the ReLU outputs, of their squared deviations
};

// The whole time loop for this thread's row blocks (a row's state only ever feeds the same
// row). The batch statistics are per-block column sums in the scalar type, added in block order
// after a barrier, so every thread count gives the same bits. Inner loops run over the H
// features of one row with per-feature arrays, so they vectorise.
template <typename scalar_t>
HNRNN_INLINE void forward_rows(const ForwardArgs<scalar_t>& a, int64_t thread, int64_t threads) {
  constexpr int64_t R = hnrnn::cpu::kRowsPerTask;
  const int64_t B = a.B, T = a.T, H = a.H;
  const int64_t blk0 = thread * a.blocks / threads, blk1 = (thread + 1) * a.blocks / threads;
  const int64_t b0 = blk0 * R, b1 = std::min(B, blk1 * R);
  std::vector<scalar_t> buf(4 * H);
  scalar_t* __restrict__ s1 = buf.data();             // mean
  scalar_t* __restrict__ s2 = buf.data() + H;         // sum of squared deviations, then invstd
  scalar_t* __restrict__ scale = buf.data() + 2 * H;  // invstd * gamma
  scalar_t* __restrict__ shift = buf.data() + 3 * H;  // beta - mean * scale
  for (int64_t t = 0; t < T; ++t) {
    scalar_t* __restrict__ x = a.xs + t * B * H;
    scalar_t* __restrict__ r = a.rs + t * B * H;
    // h_{t-1}: h0, the previous output (a strided row of `out`), or the previous ReLU.
    const scalar_t* hp = t == 0 ? a.h0 : (a.norm_state ? a.out + (t - 1) * H : a.rs + (t - 1) * B * H);
    const int64_t hs = (t > 0 && a.norm_state) ? T * H : H;
    for (int64_t b = b0; b < b1; ++b) {
      row_gather(x + b * H, r + b * H, hp + b * hs, a.E + a.ids[b * T + t] * H, a.bias, H);
    }
    if (t == 0 && a.skip_first_linear)
      std::copy(x + b0 * H, x + b1 * H, r + b0 * H);  // r = x
    else
      hnrnn::cpu::small_gemm(b1 - b0, H, H, x + b0 * H, H, 1, a.W_t, H, r + b0 * H, H, true);  // r = b + x W^T
    if (a.training) {
      for (int64_t blk = blk0; blk < blk1; ++blk) {
        scalar_t* p = a.part_sum + blk * H;
        std::fill(p, p + H, scalar_t(0));
        for (int64_t b = blk * R; b < std::min(B, (blk + 1) * R); ++b) row_relu_sum(r + b * H, p, H);
      }
      hnrnn::cpu::team_barrier();
      column_total(s1, a.part_sum, a.blocks, H, H);
      for (int64_t k = 0; k < H; ++k) s1[k] /= static_cast<scalar_t>(B);
      for (int64_t blk = blk0; blk < blk1; ++blk) {  // two-pass variance
        scalar_t* p = a.part_sq + blk * H;
        std::fill(p, p + H, scalar_t(0));
        for (int64_t b = blk * R; b < std::min(B, (blk + 1) * R); ++b) row_sq_dev(r + b * H, s1, p, H);
      }
      hnrnn::cpu::team_barrier();
      column_total(s2, a.part_sq, a.blocks, H, H);
      for (int64_t k = 0; k < H; ++k) {
        const scalar_t var = s2[k] / static_cast<scalar_t>(B);
        if (thread == 0) {
          a.rm[k] = zc::running_update(a.rm[k], s1[k], a.momentum);
          a.rv[k] = zc::running_update(a.rv[k], var * static_cast<scalar_t>(B) / static_cast<scalar_t>(B - 1),
                                       a.momentum);
        }
        s2[k] = scalar_t(1) / std::sqrt(var + a.eps);
      }
    } else {
      for (int64_t i = b0 * H; i < b1 * H; ++i) r[i] = zc::relu(r[i]);
      if (t == 0) {  // eval: the running statistics, the same every step
        for (int64_t k = 0; k < H; ++k) {
          s1[k] = a.rm_in[k];
          s2[k] = scalar_t(1) / std::sqrt(a.rv_in[k] + a.eps);
        }
      }
    }
    for (int64_t k = 0; k < H; ++k) {
      if (thread == 0) {
        a.mean[t * H + k] = s1[k];
        a.invstd[t * H + k] = s2[k];
      }
      scale[k] = s2[k] * a.gamma[k];
      shift[k] = a.beta[k] - s1[k] * scale[k];
    }
    for (int64_t b = b0; b < b1; ++b) row_normalise(a.out + (b * T + t) * H, r + b * H, scale, shift, H);
  }
  for (int64_t b = b0; b < b1; ++b) {
    const scalar_t* src = a.norm_state ? a.out + (b * T + T - 1) * H : a.rs + ((T - 1) * B + b) * H;
    std::copy(src, src + H, a.hT + b * H);
  }
}

// OpenMP's outlined region bodies are compiled for the baseline target only, so each thread
// calls back into a per-vector-width clone (cpu_common.h); double runs the template itself.
HNRNN_CPU_CLONES void run_forward_rows(const ForwardArgs<float>& a, int64_t thread, int64_t threads) {
  forward_rows(a, thread, threads);
}
void run_forward_rows(const ForwardArgs<double>& a, int64_t thread, int64_t threads) {
  forward_rows(a, thread, threads);
}

// The running statistics come in as rm_in / rv_in and leave updated in rm / rv. The weight is
// transposed here into W_t, (H_in, H_out) row-major, so the GEMM streams its rows (cheaper than
// a separate aten transpose-copy at the lesson's sizes).
template <typename scalar_t>
HNRNN_INLINE void forward_kernel(const int64_t* ids, const scalar_t* h0, const scalar_t* E, const scalar_t* W,
                    const scalar_t* bias, const scalar_t* gamma, const scalar_t* beta, const scalar_t* rm_in,
                    const scalar_t* rv_in, scalar_t* rm, scalar_t* rv, bool norm_state, bool training,
                    bool skip_first_linear, double momentum, double eps, int64_t B, int64_t T, int64_t H,
                    scalar_t* out, scalar_t* hT,
                    scalar_t* xs, scalar_t* rs, scalar_t* mean, scalar_t* invstd) {
  const int64_t blocks = (B + hnrnn::cpu::kRowsPerTask - 1) / hnrnn::cpu::kRowsPerTask;
  std::vector<scalar_t> shared(H * H + 2 * blocks * H);
  scalar_t* W_t = shared.data();
  for (int64_t i = 0; i < H; ++i)
    for (int64_t j = 0; j < H; ++j) W_t[j * H + i] = W[i * H + j];
  std::copy(rm_in, rm_in + H, rm);
  std::copy(rv_in, rv_in + H, rv);
  const ForwardArgs<scalar_t> args{ids, h0, E, W_t, bias, gamma, beta, rm_in, rv_in, rm, rv, norm_state, training,
                                   skip_first_linear, static_cast<scalar_t>(momentum), static_cast<scalar_t>(eps), B, T, H, blocks,
                                   out, hT, xs, rs, mean, invstd, W_t + H * H, W_t + H * H + blocks * H};
  hnrnn::cpu::run_team(team_for(B, H), [&](int64_t thread, int64_t threads) {
    run_forward_rows(args, thread, threads);
  });
}

// float runs through clones compiled per vector width (cpu_common.h); double, for the tests and
// gradcheck, through the template itself.
HNRNN_CPU_CLONES void forward_kernel_f32(const int64_t* ids, const float* h0, const float* E, const float* W,
                                         const float* bias, const float* gamma, const float* beta,
                                         const float* rm_in, const float* rv_in, float* rm, float* rv,
                                         bool norm_state, bool training, bool skip_first_linear, double momentum,
                                         double eps, int64_t B, int64_t T, int64_t H, float* out, float* hT,
                                         float* xs, float* rs, float* mean, float* invstd) {
  forward_kernel<float>(ids, h0, E, W, bias, gamma, beta, rm_in, rv_in, rm, rv, norm_state, training,
                        skip_first_linear, momentum, eps, B, T, H, out, hT, xs, rs, mean, invstd);
}
inline auto forward_for(float*) { return &forward_kernel_f32; }
inline auto forward_for(double*) { return &forward_kernel<double>; }

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> zoo_cell_forward_cpu(
    const Tensor& ids, const Tensor& h0, const Tensor& emb, const Tensor& weight, const Tensor& bias,
    const Tensor& bn_weight, const Tensor& bn_bias, const Tensor& running_mean, const Tensor& running_var,
    bool norm_state, bool training, double momentum, double eps, bool skip_first_linear) {
  hnrnn::zoo::check_forward_inputs(ids, h0, emb, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                   training);
  const int64_t B = ids.size(0), T = ids.size(1), H = h0.size(1), V = emb.size(0);
  check_ids(ids, V);
  auto out = hnrnn::empty_output({B, T, H}, h0.options());
  auto hT = hnrnn::empty_output({B, H}, h0.options());
  auto rm = hnrnn::empty_output({H}, h0.options());
  auto rv = hnrnn::empty_output({H}, h0.options());
  auto xs = hnrnn::empty_output({T, B, H}, h0.options());
  auto rs = hnrnn::empty_output({T, B, H}, h0.options());
  auto mean = hnrnn::empty_output({T, H}, h0.options());
  auto invstd = hnrnn::empty_output({T, H}, h0.options());
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "zoo_cell_forward_cpu", [&] {
    forward_for(static_cast<scalar_t*>(nullptr))(ids.data_ptr<int64_t>(), h0.data_ptr<scalar_t>(), emb.data_ptr<scalar_t>(),
                             weight.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                             bn_weight.data_ptr<scalar_t>(), bn_bias.data_ptr<scalar_t>(),
                             running_mean.data_ptr<scalar_t>(), running_var.data_ptr<scalar_t>(),
                             rm.data_ptr<scalar_t>(), rv.data_ptr<scalar_t>(), norm_state, training,
                             skip_first_linear, momentum, eps, B, T, H, out.data_ptr<scalar_t>(), hT.data_ptr<scalar_t>(),
                             xs.data_ptr<scalar_t>(), rs.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                             invstd.data_ptr<scalar_t>());
  });
  return {out, hT, rm, rv, xs, rs, mean, invstd};
}

// What one thread of the backward team reads and writes.
template <typename scalar_t>
struct BackwardArgs {
  const scalar_t *gout, *ghT;
  const scalar_t *W, *gamma, *rs, *mean, *invstd;
  bool norm_state, training, skip_first_linear;
  int64_t B, T, H, blocks;
  scalar_t *gz, *gx, *ggamma, *gbeta;
  scalar_t* gtot;   // gradient reaching out_t (B x H)
  scalar_t* parts;  // per step parity and row block: column sums of g, then of g * xhat (2H)
};

// The reverse time loop for this thread's row blocks: one barrier a step, for the batch sums
// of the BatchNorm gradient (per-block partials added in block order, as in forward). The
// partial sums alternate between two buffers by step parity, so a thread may write the next
// step's while another still reads this step's.
template <typename scalar_t>
HNRNN_INLINE void backward_rows(const BackwardArgs<scalar_t>& a, int64_t thread, int64_t threads) {
  constexpr int64_t R = hnrnn::cpu::kRowsPerTask;
  const int64_t B = a.B, T = a.T, H = a.H;
  const int64_t blk0 = thread * a.blocks / threads, blk1 = (thread + 1) * a.blocks / threads;
  const int64_t b0 = blk0 * R, b1 = std::min(B, blk1 * R);
  std::vector<scalar_t> buf(5 * H);
  scalar_t* __restrict__ sg = buf.data();  // sum over the batch of g
  scalar_t* __restrict__ sgx = sg + H;     // ... of g * xhat
  scalar_t* __restrict__ ca = sgx + H;     // dz = ca * g + cc + cd * (r - mean) (+ direct), see below
  scalar_t* __restrict__ cc = ca + H;
  scalar_t* __restrict__ cd = cc + H;
  const scalar_t inv_n = scalar_t(1) / static_cast<scalar_t>(B);
  const scalar_t* gh = a.ghT;  // gradient w.r.t. h_t (this thread's rows)
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* __restrict__ r = a.rs + t * B * H;
    const scalar_t* __restrict__ m_t = a.mean + t * H;
    const scalar_t* __restrict__ is_t = a.invstd + t * H;
    scalar_t* parts = a.parts + (t & 1) * a.blocks * 2 * H;
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      scalar_t* psg = parts + blk * 2 * H;
      scalar_t* psgx = psg + H;
      std::fill(psg, psg + 2 * H, scalar_t(0));
      for (int64_t b = blk * R; b < std::min(B, (blk + 1) * R); ++b) {
        if (a.norm_state)
          row_bn_grad_sums<true>(a.gtot + b * H, a.gout + (b * T + t) * H, gh + b * H, r + b * H, m_t, is_t, psg,
                                 psgx, H);
        else
          row_bn_grad_sums<false>(a.gtot + b * H, a.gout + (b * T + t) * H, gh + b * H, r + b * H, m_t, is_t, psg,
                                  psgx, H);
      }
    }
    hnrnn::cpu::team_barrier();
    column_total(sg, parts, a.blocks, 2 * H, H);
    column_total(sgx, parts + H, a.blocks, 2 * H, H);
    // zc::bn_relu_backward, with its per-feature factors hoisted out of the batch loop:
    // dr = gamma*invstd * (g - sg/B - (r - mean)*invstd*sgx/B)  (training; eval: gamma*invstd*g)
    for (int64_t k = 0; k < H; ++k) {
      if (thread == 0) {
        a.ggamma[k] += sgx[k];
        a.gbeta[k] += sg[k];
      }
      ca[k] = a.gamma[k] * is_t[k];
      cc[k] = sg[k] * inv_n;
      cd[k] = is_t[k] * sgx[k] * inv_n;
    }
    scalar_t* gz_t = a.gz + t * B * H;
    // the carried state gradient reaches r directly when the state is not normalised
    auto dz_rows = [&](auto direct, auto train) {
      for (int64_t b = b0; b < b1; ++b)
        row_dz<decltype(direct)::value, decltype(train)::value>(gz_t + b * H, a.gtot + b * H, gh + b * H,
                                                                  r + b * H, m_t, ca, cc, cd, H);
    };
    if (a.norm_state && a.training) dz_rows(std::false_type{}, std::true_type{});
    else if (a.norm_state) dz_rows(std::false_type{}, std::false_type{});
    else if (a.training) dz_rows(std::true_type{}, std::true_type{});
    else dz_rows(std::true_type{}, std::false_type{});
    scalar_t* gx_t = a.gx + t * B * H;
    if (t == 0 && a.skip_first_linear)
      std::copy(gz_t + b0 * H, gz_t + b1 * H, gx_t + b0 * H);  // r_0 = ReLU(x_0): dx_0 = dz_0
    else
      hnrnn::cpu::small_gemm(b1 - b0, H, H, gz_t + b0 * H, H, 1, a.W, H, gx_t + b0 * H, H, false);  // dx_t = dz_t W
    gh = gx_t;  // h_{t-1} enters x_t with coefficient 1
  }
}

HNRNN_CPU_CLONES void run_backward_rows(const BackwardArgs<float>& a, int64_t thread, int64_t threads) {
  backward_rows(a, thread, threads);
}
void run_backward_rows(const BackwardArgs<double>& a, int64_t thread, int64_t threads) {
  backward_rows(a, thread, threads);
}

template <typename scalar_t>
HNRNN_INLINE void backward_kernel(const scalar_t* gout, const scalar_t* ghT, const int64_t* ids, const scalar_t* W,
                     const scalar_t* gamma, const scalar_t* xs, const scalar_t* rs, const scalar_t* mean,
                     const scalar_t* invstd, bool norm_state, bool training, bool skip_first_linear,
                     int64_t B, int64_t T, int64_t H, scalar_t* gz, scalar_t* gx, scalar_t* gh0, scalar_t* gE,
                     scalar_t* gW, scalar_t* gb, scalar_t* ggamma, scalar_t* gbeta) {
  const int64_t blocks = (B + hnrnn::cpu::kRowsPerTask - 1) / hnrnn::cpu::kRowsPerTask;
  std::vector<scalar_t> buf(B * H + 2 * blocks * 2 * H);
  std::fill(ggamma, ggamma + H, scalar_t(0));
  std::fill(gbeta, gbeta + H, scalar_t(0));
  const BackwardArgs<scalar_t> args{gout, ghT, W, gamma, rs, mean, invstd, norm_state, training, skip_first_linear,
                                    B, T, H, blocks,
                                    gz, gx, ggamma, gbeta, buf.data(), buf.data() + B * H};
  hnrnn::cpu::run_team(team_for(B, H), [&](int64_t thread, int64_t threads) {
    run_backward_rows(args, thread, threads);
  });
  std::copy(gx, gx + B * H, gh0);
  // dW = sum_t dz_t^T x_t over all T*B rows at once (A = dZ^T: a stride swap), from step 1 on
  // with skip_first_linear (step 0 has no linear layer); each thread owns whole output rows, so
  // the sums do not depend on the thread count.
  const int64_t first = skip_first_linear ? B : 0;  // the first row of a step with a linear layer
  at::parallel_for(0, H, 16, [&](int64_t m0, int64_t m1) {
    hnrnn::cpu::small_gemm(m1 - m0, H, T * B - first, gz + first * H + m0, 1, H, xs + first * H, H, gW + m0 * H, H,
                           false);
  });
  std::fill(gb, gb + H, scalar_t(0));
  for (int64_t i = first; i < T * B; ++i) row_add(gb, gz + i * H, H);
  // dE[ids[b, t]] += dx_t[b], in a fixed order.
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b) row_add(gE + ids[b * T + t] * H, gx + (t * B + b) * H, H);
}

HNRNN_CPU_CLONES void backward_kernel_f32(const float* gout, const float* ghT, const int64_t* ids, const float* W,
                                          const float* gamma, const float* xs, const float* rs, const float* mean,
                                          const float* invstd, bool norm_state, bool training,
                                          bool skip_first_linear, int64_t B, int64_t T, int64_t H, float* gz,
                                          float* gx, float* gh0, float* gE, float* gW, float* gb, float* ggamma,
                                          float* gbeta) {
  backward_kernel<float>(gout, ghT, ids, W, gamma, xs, rs, mean, invstd, norm_state, training, skip_first_linear,
                         B, T, H, gz, gx, gh0, gE, gW, gb, ggamma, gbeta);
}
inline auto backward_for(float*) { return &backward_kernel_f32; }
inline auto backward_for(double*) { return &backward_kernel<double>; }

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> zoo_cell_backward_cpu(
    const Tensor& grad_out, const Tensor& grad_hT, const Tensor& ids, int64_t vocab_size, const Tensor& weight,
    const Tensor& bn_weight, const Tensor& xs, const Tensor& rs, const Tensor& mean, const Tensor& invstd,
    bool norm_state, bool training, bool skip_first_linear) {
  hnrnn::zoo::check_backward_inputs(grad_out, grad_hT, ids, weight, bn_weight, xs, rs, mean, invstd);
  const int64_t B = ids.size(0), T = ids.size(1), H = weight.size(0);
  check_ids(ids, vocab_size);
  auto opts = weight.options();
  auto gz = hnrnn::empty_output({T, B, H}, opts);
  auto gx = hnrnn::empty_output({T, B, H}, opts);
  auto gh0 = hnrnn::empty_output({B, H}, opts);
  auto gE = at::zeros({vocab_size, H}, opts);
  auto gW = hnrnn::empty_output({H, H}, opts);
  auto gb = hnrnn::empty_output({H}, opts);
  auto ggamma = hnrnn::empty_output({H}, opts);
  auto gbeta = hnrnn::empty_output({H}, opts);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "zoo_cell_backward_cpu", [&] {
    backward_for(static_cast<scalar_t*>(nullptr))(grad_out.data_ptr<scalar_t>(), grad_hT.data_ptr<scalar_t>(), ids.data_ptr<int64_t>(),
                              weight.data_ptr<scalar_t>(), bn_weight.data_ptr<scalar_t>(), xs.data_ptr<scalar_t>(),
                              rs.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>(),
                              norm_state, training, skip_first_linear, B, T, H, gz.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                              gh0.data_ptr<scalar_t>(), gE.data_ptr<scalar_t>(), gW.data_ptr<scalar_t>(),
                              gb.data_ptr<scalar_t>(), ggamma.data_ptr<scalar_t>(), gbeta.data_ptr<scalar_t>());
  });
  return {gh0, gE, gW, gb, ggamma, gbeta};
}

}  // namespace

TORCH_LIBRARY_IMPL(hnrnn, CPU, m) {
  m.impl("zoo_cell_forward", &zoo_cell_forward_cpu);
  m.impl("zoo_cell_backward", &zoo_cell_backward_cpu);
}
