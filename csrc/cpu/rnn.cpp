// CPU kernels of the GRU / vanilla-RNN recurrences (one layer, one direction).
//
// The input projection of all steps (gates_x = x W_ih^T + b_ih) is one GEMM done by the
// caller. Here, per step: one small register-blocked GEMM (small_gemm.h: BLAS costs more in
// threading and dispatch than in arithmetic at these sizes) for the recurrent gates, then one
// fused, auto-vectorised pointwise pass (gate math from rnn_math.h). Backward keeps only
// dh_prev = dh * z + dG_h W_hh sequential; the weight / input gradients are big GEMMs done
// by the caller on the returned per-step gate gradients.
//
// Workspace layouts (shared with every backend, see hnrnn/ops/rnn.py):
//   GRU: ws (T, B, 5H) = [r, z, n, gh_n, h_prev]      RNN: ws (T, B, H) = [h]
// Masking (lengths, for packed sequences): step t of sequence b is active iff
// t < lengths[b]; inactive steps output 0, keep the state, and pass gradients through.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

// The gate math must auto-vectorise: its selects (clamps, relu) and divisions only
// if-convert when GCC may assume FP operations do not trap. Set before rnn_math.h so its
// inline functions get it too (and stay inlinable into the kernels below).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "../op_checks.h"
#include "../rnn_dispatch.h"
#include "cpu_common.h"
#include "rnn_math.h"
#include "small_gemm.h"


namespace hnrnn {
namespace {

// lengths as a host vector; no lengths = every step active.
std::vector<int64_t> host_lengths(const c10::optional<at::Tensor>& lengths, int64_t B, int64_t T) {
  std::vector<int64_t> len(B, T);
  if (lengths.has_value()) {
    auto l = lengths->to(at::kCPU).contiguous();
    const int64_t* p = l.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) len[b] = p[b];
  }
  return len;
}

at::Tensor bias_or_zeros(const c10::optional<at::Tensor>& b_hh, int64_t n, const at::Tensor& like) {
  return b_hh.has_value() ? b_hh->contiguous().view({n}) : at::zeros({n}, like.options());
}

// ---------------------------------------------------------------- GRU
// Pointwise passes over one batch row (H units). always_inline: they must be compiled
// inside the target_clones step functions below to be vectorised for the wide targets.
// kSave: write the workspace (false for a forward no backward follows; ws is then null).
template <typename T, bool kSave>
HNRNN_INLINE void gru_row_fwd(int64_t H, const T* __restrict__ gx, const T* __restrict__ gh,
                              const T* __restrict__ bh, T* __restrict__ h, T* __restrict__ out,
                              T* __restrict__ ws) {
  for (int64_t j = 0; j < H; ++j) {
    const T hp = h[j];
    const T gh_n = gh[2 * H + j] + bh[2 * H + j];
    GruGates<T> g = gru_forward<T>(gx[j], gx[H + j], gx[2 * H + j], gh[j] + bh[j],
                                   gh[H + j] + bh[H + j], gh_n, hp);
    if (kSave) {
      ws[j] = g.r;
      ws[H + j] = g.z;
      ws[2 * H + j] = g.n;
      ws[3 * H + j] = gh_n;
      ws[4 * H + j] = hp;
    }
    out[j] = g.h;
    h[j] = g.h;
  }
}

template <typename T>
HNRNN_INLINE void gru_row_bwd(int64_t H, const T* __restrict__ dh_carry, const T* __restrict__ gout,
                              const T* __restrict__ ws, T* __restrict__ dgx, T* __restrict__ dgh,
                              T* __restrict__ dprev) {
  for (int64_t j = 0; j < H; ++j) {
    const T dh = dh_carry[j] + gout[j];
    GruGrads<T> g = gru_backward<T>(dh, ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j], ws[4 * H + j]);
    dgx[j] = g.d_r;
    dgx[H + j] = g.d_z;
    dgx[2 * H + j] = g.d_n;
    dgh[j] = g.d_r;
    dgh[H + j] = g.d_z;
    dgh[2 * H + j] = g.d_hn;
    dprev[j] = g.dh_prev;
  }
}

// One step over rows [0, nb) of a batch slice. Row strides: gates 3H, ws 5H, state H.
// A masked row outputs 0, keeps its state, and leaves finite zeros / its state in the
// workspace (the dW_hh GEMM multiplies them by zero gate gradients). ws null: none is saved.
template <typename T>
HNRNN_INLINE void gru_step_fwd(int64_t nb, int64_t H, int64_t t, const int64_t* len, const T* gx,
                               const T* gh, const T* bh, T* h, T* out, T* ws) {
  for (int64_t b = 0; b < nb; ++b) {
    if (t < len[b]) {
      if (ws)
        gru_row_fwd<T, true>(H, gx + b * 3 * H, gh + b * 3 * H, bh, h + b * H, out + b * H, ws + b * 5 * H);
      else
        gru_row_fwd<T, false>(H, gx + b * 3 * H, gh + b * 3 * H, bh, h + b * H, out + b * H, nullptr);
    } else {
      std::fill(out + b * H, out + (b + 1) * H, T(0));
      if (ws) {
        std::fill(ws + b * 5 * H, ws + b * 5 * H + 4 * H, T(0));
        std::copy(h + b * H, h + (b + 1) * H, ws + b * 5 * H + 4 * H);
      }
    }
  }
}

// Backward step: a masked row passes its carried gradient through (out[t, b] was a
// constant 0, so grad_out[t, b] does not reach the state) and has zero gate gradients.
template <typename T>
HNRNN_INLINE void gru_step_bwd(int64_t nb, int64_t H, int64_t t, const int64_t* len, const T* dh,
                               const T* go, const T* ws, T* dgx, T* dgh, T* dprev) {
  for (int64_t b = 0; b < nb; ++b) {
    if (t < len[b]) {
      gru_row_bwd<T>(H, dh + b * H, go + b * H, ws + b * 5 * H, dgx + b * 3 * H, dgh + b * 3 * H,
                     dprev + b * H);
    } else {
      std::copy(dh + b * H, dh + (b + 1) * H, dprev + b * H);
      std::fill(dgx + b * 3 * H, dgx + (b + 1) * 3 * H, T(0));
      std::fill(dgh + b * 3 * H, dgh + (b + 1) * 3 * H, T(0));
    }
  }
}

HNRNN_CPU_CLONES void gru_step_fwd_f32(int64_t nb, int64_t H, int64_t t, const int64_t* len, const float* gx,
                                       const float* gh, const float* bh, float* h, float* out, float* ws) {
  gru_step_fwd<float>(nb, H, t, len, gx, gh, bh, h, out, ws);
}
HNRNN_CPU_CLONES void gru_step_bwd_f32(int64_t nb, int64_t H, int64_t t, const int64_t* len, const float* dh,
                                       const float* go, const float* ws, float* dgx, float* dgh, float* dprev) {
  gru_step_bwd<float>(nb, H, t, len, dh, go, ws, dgx, dgh, dprev);
}
// float goes through the vectorised clones; double (tests, gradcheck) through the template.
template <typename T>
void gru_step_fwd_any(int64_t nb, int64_t H, int64_t t, const int64_t* len, const T* gx, const T* gh,
                      const T* bh, T* h, T* out, T* ws) {
  if constexpr (std::is_same_v<T, float>) {
    gru_step_fwd_f32(nb, H, t, len, gx, gh, bh, h, out, ws);
  } else {
    gru_step_fwd<T>(nb, H, t, len, gx, gh, bh, h, out, ws);
  }
}
template <typename T>
void gru_step_bwd_any(int64_t nb, int64_t H, int64_t t, const int64_t* len, const T* dh, const T* go,
                      const T* ws, T* dgx, T* dgh, T* dprev) {
  if constexpr (std::is_same_v<T, float>) {
    gru_step_bwd_f32(nb, H, t, len, dh, go, ws, dgx, dgh, dprev);
  } else {
    gru_step_bwd<T>(nb, H, t, len, dh, go, ws, dgx, dgh, dprev);
  }
}

// Batch rows are independent through the whole recurrence (forward and backward), so the
// batch is cut into blocks of kRowsPerTask rows and each block runs the complete time loop on
// its own: no synchronisation per step, the small per-step GEMMs run single-threaded inside
// the parallel region, and a block's gate buffer stays in L1 between its GEMM and pointwise pass.
using hnrnn::cpu::kRowsPerTask;

template <typename F>
void for_each_row_block(int64_t B, const F& fn) {
  at::parallel_for(0, (B + kRowsPerTask - 1) / kRowsPerTask, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) fn(i * kRowsPerTask, std::min(B, (i + 1) * kRowsPerTask));
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_recurrence_cpu(
    const at::Tensor& gates_x_, const at::Tensor& h0, const at::Tensor& w_hh_,
    const c10::optional<at::Tensor>& b_hh, bool reverse, const c10::optional<at::Tensor>& lengths, bool save) {
  check_recurrence_inputs(gates_x_, h0, w_hh_, b_hh, lengths, 3);
  const at::Tensor gates_x = gates_x_.contiguous(), w_hh = w_hh_.contiguous();
  const int64_t T = gates_x.size(0), B = gates_x.size(1), H = h0.size(1);
  at::Tensor out = empty_output({T, B, H}, h0.options());
  at::Tensor ws = empty_output(workspace_shape(true, T, B, H, save), h0.options());
  at::Tensor h = h0.contiguous().clone();  // the running state, returned as h_n
  at::Tensor gh = empty_output({B, 3 * H}, h0.options());
  const at::Tensor bias = bias_or_zeros(b_hh, 3 * H, h0);
  const auto len = host_lengths(lengths, B, T);
  const at::Tensor w_t = w_hh.t().contiguous();  // (H, 3H): the per-step GEMM streams its rows
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "gru_recurrence_cpu", [&] {
    scalar_t* wsp = save ? ws.data_ptr<scalar_t>() : nullptr;
    for_each_row_block(B, [&](int64_t b0, int64_t b1) {
      const int64_t nb = b1 - b0;
      scalar_t* h_s = h.data_ptr<scalar_t>() + b0 * H;
      scalar_t* gh_s = gh.data_ptr<scalar_t>() + b0 * 3 * H;
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = reverse ? T - 1 - s : s;
        cpu::small_gemm(nb, 3 * H, H, h_s, H, 1, w_t.data_ptr<scalar_t>(), 3 * H, gh_s, 3 * H, false);
        gru_step_fwd_any<scalar_t>(nb, H, t, len.data() + b0,
                                   gates_x.data_ptr<scalar_t>() + (t * B + b0) * 3 * H,
                                   gh_s, bias.data_ptr<scalar_t>(), h_s,
                                   out.data_ptr<scalar_t>() + (t * B + b0) * H,
                                   ws_at(wsp, (t * B + b0) * 5 * H));
      }
    });
  });
  return std::make_tuple(out, h, ws);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_recurrence_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& grad_h_n, const at::Tensor& ws_, const at::Tensor& w_hh_,
    bool reverse, const c10::optional<at::Tensor>& lengths) {
  check_recurrence_backward_inputs(grad_out_, grad_h_n, ws_, w_hh_, lengths, 3, ws_width(true));
  const at::Tensor grad_out = grad_out_.contiguous(), ws = ws_.contiguous(), w_hh = w_hh_.contiguous();
  const int64_t T = grad_out.size(0), B = grad_out.size(1), H = grad_out.size(2);
  at::Tensor dgx = empty_output({T, B, 3 * H}, grad_out.options());
  at::Tensor dgh = empty_output({T, B, 3 * H}, grad_out.options());
  at::Tensor dh0 = grad_h_n.contiguous().clone();
  at::Tensor dprev = empty_output({B, H}, grad_out.options());
  const auto len = host_lengths(lengths, B, T);
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "gru_recurrence_backward_cpu", [&] {
    for_each_row_block(B, [&](int64_t b0, int64_t b1) {
      const int64_t nb = b1 - b0;
      scalar_t* dh_s = dh0.data_ptr<scalar_t>() + b0 * H;
      scalar_t* dprev_s = dprev.data_ptr<scalar_t>() + b0 * H;
      for (int64_t s = T - 1; s >= 0; --s) {  // the forward order, reversed
        const int64_t t = reverse ? T - 1 - s : s;
        scalar_t* dght = dgh.data_ptr<scalar_t>() + (t * B + b0) * 3 * H;
        gru_step_bwd_any<scalar_t>(nb, H, t, len.data() + b0, dh_s,
                                   grad_out.data_ptr<scalar_t>() + (t * B + b0) * H,
                                   ws.data_ptr<scalar_t>() + (t * B + b0) * 5 * H,
                                   dgx.data_ptr<scalar_t>() + (t * B + b0) * 3 * H, dght, dprev_s);
        // dh_prev += dG_h W_hh
        cpu::small_gemm(nb, H, 3 * H, dght, 3 * H, 1, w_hh.data_ptr<scalar_t>(), H, dprev_s, H, true);
        std::swap(dh_s, dprev_s);
      }
      if (T % 2 == 1) std::copy(dh_s, dh_s + nb * H, dh0.data_ptr<scalar_t>() + b0 * H);  // the carry ended in the other buffer
    });
  });
  return std::make_tuple(dgx, dgh, dh0);
}

// ---------------------------------------------------------------- vanilla RNN
// Row passes with restrict parameters (GCC ignores restrict on local pointers, and the
// aliasing checks would keep these loops scalar).
template <typename T, bool RELU, bool kSave>
HNRNN_INLINE void rnn_row_fwd(int64_t H, const T* __restrict__ gx, const T* __restrict__ gh,
                              const T* __restrict__ bh, T* __restrict__ h, T* __restrict__ out,
                              T* __restrict__ ws) {
  for (int64_t j = 0; j < H; ++j) {
    const T hn = rnn_forward<T>(gx[j] + gh[j] + bh[j], RELU);
    if (kSave) ws[j] = hn;
    out[j] = hn;
    h[j] = hn;
  }
}

template <typename T, bool RELU>
HNRNN_INLINE void rnn_row_bwd(int64_t H, const T* __restrict__ dh, const T* __restrict__ go,
                              const T* __restrict__ ws, T* __restrict__ dg, T* __restrict__ dprev) {
  for (int64_t j = 0; j < H; ++j) {
    dg[j] = rnn_backward<T>(dh[j] + go[j], ws[j], RELU);
    dprev[j] = T(0);  // all of dh_prev flows through W_hh for an active row
  }
}

// ws null: none is saved.
template <typename T>
HNRNN_INLINE void rnn_step_fwd(int64_t nb, int64_t H, bool relu, int64_t t, const int64_t* len,
                               const T* gx, const T* gh, const T* bh, T* h, T* out, T* ws) {
  for (int64_t b = 0; b < nb; ++b) {
    T* out_b = out + b * H;
    if (t >= len[b]) {  // masked row: output 0, keep the state
      std::fill(out_b, out_b + H, T(0));
      if (ws) std::fill(ws + b * H, ws + (b + 1) * H, T(0));
    } else if (ws && relu) {
      rnn_row_fwd<T, true, true>(H, gx + b * H, gh + b * H, bh, h + b * H, out_b, ws + b * H);
    } else if (ws) {
      rnn_row_fwd<T, false, true>(H, gx + b * H, gh + b * H, bh, h + b * H, out_b, ws + b * H);
    } else if (relu) {
      rnn_row_fwd<T, true, false>(H, gx + b * H, gh + b * H, bh, h + b * H, out_b, nullptr);
    } else {
      rnn_row_fwd<T, false, false>(H, gx + b * H, gh + b * H, bh, h + b * H, out_b, nullptr);
    }
  }
}

// A masked row passes its carried gradient through and has zero gate gradients.
template <typename T>
HNRNN_INLINE void rnn_step_bwd(int64_t nb, int64_t H, bool relu, int64_t t, const int64_t* len,
                               const T* dh, const T* go, const T* ws, T* dg, T* dprev) {
  for (int64_t b = 0; b < nb; ++b) {
    if (t >= len[b]) {
      std::copy(dh + b * H, dh + (b + 1) * H, dprev + b * H);
      std::fill(dg + b * H, dg + (b + 1) * H, T(0));
    } else if (relu) {
      rnn_row_bwd<T, true>(H, dh + b * H, go + b * H, ws + b * H, dg + b * H, dprev + b * H);
    } else {
      rnn_row_bwd<T, false>(H, dh + b * H, go + b * H, ws + b * H, dg + b * H, dprev + b * H);
    }
  }
}

HNRNN_CPU_CLONES void rnn_step_fwd_f32(int64_t nb, int64_t H, bool relu, int64_t t, const int64_t* len,
                                       const float* gx, const float* gh, const float* bh, float* h, float* out,
                                       float* ws) {
  rnn_step_fwd<float>(nb, H, relu, t, len, gx, gh, bh, h, out, ws);
}
HNRNN_CPU_CLONES void rnn_step_bwd_f32(int64_t nb, int64_t H, bool relu, int64_t t, const int64_t* len,
                                       const float* dh, const float* go, const float* ws, float* dg,
                                       float* dprev) {
  rnn_step_bwd<float>(nb, H, relu, t, len, dh, go, ws, dg, dprev);
}
template <typename T>
void rnn_step_fwd_any(int64_t nb, int64_t H, bool relu, int64_t t, const int64_t* len, const T* gx,
                      const T* gh, const T* bh, T* h, T* out, T* ws) {
  if constexpr (std::is_same_v<T, float>) {
    rnn_step_fwd_f32(nb, H, relu, t, len, gx, gh, bh, h, out, ws);
  } else {
    rnn_step_fwd<T>(nb, H, relu, t, len, gx, gh, bh, h, out, ws);
  }
}
template <typename T>
void rnn_step_bwd_any(int64_t nb, int64_t H, bool relu, int64_t t, const int64_t* len, const T* dh,
                      const T* go, const T* ws, T* dg, T* dprev) {
  if constexpr (std::is_same_v<T, float>) {
    rnn_step_bwd_f32(nb, H, relu, t, len, dh, go, ws, dg, dprev);
  } else {
    rnn_step_bwd<T>(nb, H, relu, t, len, dh, go, ws, dg, dprev);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_recurrence_cpu(
    const at::Tensor& gates_x_, const at::Tensor& h0, const at::Tensor& w_hh_,
    const c10::optional<at::Tensor>& b_hh, bool relu, bool reverse, const c10::optional<at::Tensor>& lengths,
    bool save) {
  check_recurrence_inputs(gates_x_, h0, w_hh_, b_hh, lengths, 1);
  const at::Tensor gates_x = gates_x_.contiguous(), w_hh = w_hh_.contiguous();
  const int64_t T = gates_x.size(0), B = gates_x.size(1), H = h0.size(1);
  at::Tensor out = empty_output({T, B, H}, h0.options());
  at::Tensor ws = empty_output(workspace_shape(false, T, B, H, save), h0.options());
  at::Tensor h = h0.contiguous().clone();
  at::Tensor gh = empty_output({B, H}, h0.options());
  const at::Tensor bias = bias_or_zeros(b_hh, H, h0);
  const auto len = host_lengths(lengths, B, T);
  const at::Tensor w_t = w_hh.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "rnn_recurrence_cpu", [&] {
    scalar_t* wsp = save ? ws.data_ptr<scalar_t>() : nullptr;
    for_each_row_block(B, [&](int64_t b0, int64_t b1) {
      const int64_t nb = b1 - b0;
      scalar_t* h_s = h.data_ptr<scalar_t>() + b0 * H;
      scalar_t* gh_s = gh.data_ptr<scalar_t>() + b0 * H;
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = reverse ? T - 1 - s : s;
        cpu::small_gemm(nb, H, H, h_s, H, 1, w_t.data_ptr<scalar_t>(), H, gh_s, H, false);
        rnn_step_fwd_any<scalar_t>(nb, H, relu, t, len.data() + b0, gates_x.data_ptr<scalar_t>() + (t * B + b0) * H,
                                   gh_s, bias.data_ptr<scalar_t>(), h_s,
                                   out.data_ptr<scalar_t>() + (t * B + b0) * H,
                                   ws_at(wsp, (t * B + b0) * H));
      }
    });
  });
  return std::make_tuple(out, h, ws);
}

std::tuple<at::Tensor, at::Tensor> rnn_recurrence_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& grad_h_n, const at::Tensor& ws_, const at::Tensor& w_hh_,
    bool relu, bool reverse, const c10::optional<at::Tensor>& lengths) {
  check_recurrence_backward_inputs(grad_out_, grad_h_n, ws_, w_hh_, lengths, 1, ws_width(false));
  const at::Tensor grad_out = grad_out_.contiguous(), ws = ws_.contiguous(), w_hh = w_hh_.contiguous();
  const int64_t T = grad_out.size(0), B = grad_out.size(1), H = grad_out.size(2);
  at::Tensor dg = empty_output({T, B, H}, grad_out.options());
  at::Tensor dh0 = grad_h_n.contiguous().clone();
  at::Tensor dprev = empty_output({B, H}, grad_out.options());
  const auto len = host_lengths(lengths, B, T);
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "rnn_recurrence_backward_cpu", [&] {
    for_each_row_block(B, [&](int64_t b0, int64_t b1) {
      const int64_t nb = b1 - b0;
      scalar_t* dh_s = dh0.data_ptr<scalar_t>() + b0 * H;
      scalar_t* dprev_s = dprev.data_ptr<scalar_t>() + b0 * H;
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = reverse ? T - 1 - s : s;
        scalar_t* dgt = dg.data_ptr<scalar_t>() + (t * B + b0) * H;
        rnn_step_bwd_any<scalar_t>(nb, H, relu, t, len.data() + b0, dh_s,
                                   grad_out.data_ptr<scalar_t>() + (t * B + b0) * H,
                                   ws.data_ptr<scalar_t>() + (t * B + b0) * H, dgt, dprev_s);
        // dh_prev += dG W_hh
        cpu::small_gemm(nb, H, H, dgt, H, 1, w_hh.data_ptr<scalar_t>(), H, dprev_s, H, true);
        std::swap(dh_s, dprev_s);
      }
      if (T % 2 == 1) std::copy(dh_s, dh_s + nb * H, dh0.data_ptr<scalar_t>() + b0 * H);
    });
  });
  return std::make_tuple(dg, dh0);
}

}  // namespace
}  // namespace hnrnn

TORCH_LIBRARY_IMPL(hnrnn, CPU, m) {
  m.impl("gru_recurrence", &hnrnn::gru_recurrence_cpu);
  m.impl("gru_recurrence_backward", &hnrnn::gru_recurrence_backward_cpu);
  m.impl("rnn_recurrence", &hnrnn::rnn_recurrence_cpu);
  m.impl("rnn_recurrence_backward", &hnrnn::rnn_recurrence_backward_cpu);
}
