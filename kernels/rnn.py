"""Triton vanilla-RNN recurrence (tanh or relu), one layer and direction.

Same design as kernels/gru.py with one gate: on the resident path W_hh (H, H) stays on chip per
program of BLOCK_B batch rows, the state in registers, one tl.dot per step; on the per-step path
(larger H) one GEMM and one fused pointwise kernel per step, sharing the step math
(_rnn_fwd_cell, _rnn_bwd_cell). Workspace (T, B, H) = [h], as every hnrnn backend.
"""
import triton
import triton.language as tl

from hnrnn.kernels._common import (RESIDENT_NUM_WARPS, backward_steps, bias_row, block_sizes, compute_dtype,
                                   dot_precision, forward_steps, load_lengths, resident, tile, time_index,
                                   weight_tile, wrap_triton)


@triton.jit
def _rnn_fwd_cell(gx_ptr, ws_ptr, out_ptr, row, rj, H, m2, h, gh, lens, t,
                  HAS_LEN: tl.constexpr, RELU: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr):
    """Step t of a tile from the recurrent product gh = W_hh h + b_hh: stores the output and
    (SAVE) the workspace; returns h_t."""
    pre = tl.load(gx_ptr + row * H + rj[None, :], mask=m2, other=0.0).to(ACC) + gh
    if RELU:
        h_new = tl.maximum(pre, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    else:
        h_new = 2.0 * tl.sigmoid(2.0 * pre) - 1.0
    out_t = h_new
    if HAS_LEN:
        active = (t < lens)[:, None]
        out_t = tl.where(active, h_new, 0.0)
        h_new = tl.where(active, h_new, h)
    if SAVE:
        tl.store(ws_ptr + row * H + rj[None, :], out_t.to(ws_ptr.dtype.element_ty), mask=m2)
    tl.store(out_ptr + row * H + rj[None, :], out_t.to(out_ptr.dtype.element_ty), mask=m2)
    return h_new


@triton.jit
def _rnn_bwd_cell(go_ptr, ws_ptr, dg_ptr, row, rj, H, m2, dh, lens, t,
                  HAS_LEN: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr):
    """Step t's gate gradient from dh (stored and returned) and the direct part of dh_{t-1}:
    none (zeros), or dh itself where the step was masked."""
    h = tl.load(ws_ptr + row * H + rj[None, :], mask=m2, other=0.0).to(ACC)
    d = dh + tl.load(go_ptr + row * H + rj[None, :], mask=m2, other=0.0).to(ACC)
    if RELU:
        g = tl.where(h <= 0.0, 0.0, d)  # torch's threshold_backward: NaN h passes d
    else:
        g = d * (1.0 - h * h)
    carry = tl.zeros_like(dh)
    if HAS_LEN:
        active = (t < lens)[:, None]
        g = tl.where(active, g, 0.0)
        carry = tl.where(active, carry, dh)
    tl.store(dg_ptr + row * H + rj[None, :], g.to(dg_ptr.dtype.element_ty), mask=m2)
    return g, carry


# ------------------------------------------------------------------ resident path

@triton.jit
def _rnn_fwd_kernel(gx_ptr, h0_ptr, w_ptr, b_ptr, len_ptr, out_ptr, hn_ptr, ws_ptr, T, B, H,
                    HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr,
                    SAVE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb, rj, m2 = tile(B, H, BLOCK_B, BLOCK_H)
    wt = weight_tile(w_ptr, 0, H, BLOCK_H, TRANSPOSED=True)
    b = bias_row(b_ptr, 0, H, rj, HAS_BIAS, ACC)
    state = rb[:, None] * H + rj[None, :]
    h = tl.load(h0_ptr + state, mask=m2, other=0.0).to(ACC)
    lens = load_lengths(len_ptr, rb, B, HAS_LEN)
    for s in range(T):
        t = time_index(s, T, REVERSE)
        gh = tl.dot(h.to(wt.dtype), wt, input_precision=PRECISION, out_dtype=ACC) + b[None, :]
        h_new = _rnn_fwd_cell(gx_ptr, ws_ptr, out_ptr, t * B + rb[:, None], rj, H, m2, h, gh, lens, t,
                              HAS_LEN, RELU, SAVE, ACC)
        h = tl.where(m2, h_new, 0.0)  # padding stays 0: in the next dot, inf * 0 would be NaN
    tl.store(hn_ptr + state, h.to(hn_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _rnn_bwd_kernel(go_ptr, ghn_ptr, ws_ptr, w_ptr, len_ptr, dg_ptr, dh0_ptr, T, B, H,
                    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr,
                    ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb, rj, m2 = tile(B, H, BLOCK_B, BLOCK_H)
    w = weight_tile(w_ptr, 0, H, BLOCK_H, TRANSPOSED=False)
    state = rb[:, None] * H + rj[None, :]
    dh = tl.load(ghn_ptr + state, mask=m2, other=0.0).to(ACC)
    lens = load_lengths(len_ptr, rb, B, HAS_LEN)
    for s in range(T):  # the forward order, reversed
        t = time_index(s, T, not REVERSE)
        g, dprev = _rnn_bwd_cell(go_ptr, ws_ptr, dg_ptr, t * B + rb[:, None], rj, H, m2, dh, lens, t,
                                 HAS_LEN, RELU, ACC)
        dprev += tl.dot(g.to(w.dtype), w, input_precision=PRECISION, out_dtype=ACC)
        if HAS_LEN:  # masked: dh passes unchanged (even where W_hh is not finite)
            dprev = tl.where((t < lens)[:, None], dprev, dh)
        dh = tl.where(m2, dprev, 0.0)  # padding stays 0 (as in the forward)
    tl.store(dh0_ptr + state, dh.to(dh0_ptr.dtype.element_ty), mask=m2)


# ------------------------------------------------------------------ per-step path

@triton.jit
def _rnn_fwd_step_kernel(gx_ptr, gh_ptr, h_ptr, len_ptr, out_ptr, h_next_ptr, ws_ptr, t, B, H,
                         RELU: tl.constexpr, HAS_LEN: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Step t given gh = W_hh h + b_hh and the state h (B, H), both in ACC."""
    rb, rj, m2 = tile(B, H, BLOCK_B, BLOCK_H)
    state = rb[:, None] * H + rj[None, :]
    gh = tl.load(gh_ptr + state, mask=m2, other=0.0)
    h = tl.load(h_ptr + state, mask=m2, other=0.0)
    lens = load_lengths(len_ptr, rb, B, HAS_LEN)
    h_new = _rnn_fwd_cell(gx_ptr, ws_ptr, out_ptr, t * B + rb[:, None], rj, H, m2, h, gh, lens, t,
                          HAS_LEN, RELU, SAVE, ACC)
    tl.store(h_next_ptr + state, h_new, mask=m2)


@triton.jit
def _rnn_bwd_step_kernel(go_ptr, dh_ptr, ws_ptr, len_ptr, dg_ptr, carry_ptr, t, B, H,
                         RELU: tl.constexpr, HAS_LEN: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Step t's gate gradient and the direct part of dh_{t-1} (into carry, ACC)."""
    rb, rj, m2 = tile(B, H, BLOCK_B, BLOCK_H)
    state = rb[:, None] * H + rj[None, :]
    dh = tl.load(dh_ptr + state, mask=m2, other=0.0)
    lens = load_lengths(len_ptr, rb, B, HAS_LEN)
    _, carry = _rnn_bwd_cell(go_ptr, ws_ptr, dg_ptr, t * B + rb[:, None], rj, H, m2, dh, lens, t,
                             HAS_LEN, RELU, ACC)
    tl.store(carry_ptr + state, carry, mask=m2)


# ------------------------------------------------------------------ launchers

def rnn_forward(gates_x, h0, w_hh, b_hh, relu, reverse, lengths, save=True):
    """save=False: no workspace is written (an empty one, (0,), comes back)."""
    T, B, H = gates_x.shape[0], gates_x.shape[1], h0.shape[1]
    gates_x, h0, w_hh = gates_x.contiguous(), h0.contiguous(), w_hh.contiguous()
    out = gates_x.new_empty((T, B, H))
    ws = gates_x.new_empty((T, B, H) if save else (0,))
    ws_arg = ws if save else out  # a pointer the kernels never store to
    if not resident(1, H, h0.dtype):
        h_n = forward_steps(_rnn_fwd_step_kernel, gates_x, h0, w_hh, b_hh, reverse, lengths, out, ws_arg,
                            RELU=relu, SAVE=save)
        return out, h_n, ws
    h_n = h0.new_empty((B, H))
    block_b, block_h = block_sizes(B, H)
    wrap_triton(_rnn_fwd_kernel)[(triton.cdiv(B, block_b),)](
        gates_x, h0, w_hh, b_hh.contiguous() if b_hh is not None else w_hh,
        lengths if lengths is not None else h0, out, h_n, ws_arg, T, B, H,
        HAS_BIAS=b_hh is not None, HAS_LEN=lengths is not None, REVERSE=reverse, RELU=relu, SAVE=save,
        ACC=compute_dtype(h0.dtype), PRECISION=dot_precision(h0.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h, num_warps=RESIDENT_NUM_WARPS)
    return out, h_n, ws


def rnn_backward(grad_out, grad_h_n, ws, w_hh, relu, reverse, lengths):
    T, B, H = grad_out.shape
    grad_out, grad_h_n, ws, w_hh = grad_out.contiguous(), grad_h_n.contiguous(), ws.contiguous(), w_hh.contiguous()
    dg = grad_out.new_empty((T, B, H))
    if not resident(1, H, grad_out.dtype):
        dh0 = backward_steps(_rnn_bwd_step_kernel, grad_out, grad_h_n, ws, w_hh, reverse, lengths, (dg,), RELU=relu)
        return dg, dh0
    dh0 = grad_h_n.new_empty((B, H))
    block_b, block_h = block_sizes(B, H)
    wrap_triton(_rnn_bwd_kernel)[(triton.cdiv(B, block_b),)](
        grad_out, grad_h_n, ws, w_hh, lengths if lengths is not None else grad_h_n, dg, dh0, T, B, H,
        HAS_LEN=lengths is not None, REVERSE=reverse, RELU=relu,
        ACC=compute_dtype(grad_out.dtype), PRECISION=dot_precision(grad_out.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h, num_warps=RESIDENT_NUM_WARPS)
    return dg, dh0


__all__ = ["rnn_forward", "rnn_backward"]
