"""Triton GRU recurrence (one layer, one direction).

Resident path (W_hh small enough to stay on chip: _common.resident): the whole time loop in one
launch. One program owns BLOCK_B batch rows for all T steps; it loads the three (H, H) blocks of
W_hh once and keeps the state h in registers; per step it reads the pre-projected input gates,
does three tl.dot's (fp32 accumulation, IEEE fp32 for float32 inputs) and the fused gate math,
and writes the output and (unless no backward follows) the workspace. Backward is the same shape: dh stays in registers,
dh_prev = dh * z + dG_h W_hh per step. Sizes are padded to powers of two (>= 16 for tl.dot)
and masked.

Per-step path (larger H): per step one GEMM for the recurrent product (_common.forward_steps /
backward_steps) and one fused pointwise kernel doing the same gate math, which both paths share
(_gru_fwd_cell, _gru_bwd_cell).

Workspace (T, B, 5H) = [r, z, n, W_hn h_prev + b_hn, h_prev], as every hnrnn backend.
Launchers go through wrap_triton (_common) so the ops trace under torch.compile.
"""
import triton
import triton.language as tl

from hnrnn.kernels._common import (RESIDENT_NUM_WARPS, backward_steps, bias_row, block_sizes, compute_dtype,
                                   dot_precision, forward_steps, load_lengths, resident, tile, time_index,
                                   weight_tile, wrap_triton)


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _gru_fwd_cell(gx_ptr, ws_ptr, out_ptr, row, rj, H, m2, h, h_r, h_z, h_n, lens, t,
                  HAS_LEN: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr):
    """Step t of a tile: the gates from the input projection (gx at `row`) and the recurrent
    products h_r, h_z, h_n (W_h* h + b_h*); stores the output and (SAVE) the workspace; returns h_t."""
    gx = gx_ptr + row * (3 * H) + rj[None, :]
    x_r = tl.load(gx, mask=m2, other=0.0).to(ACC)
    x_z = tl.load(gx + H, mask=m2, other=0.0).to(ACC)
    x_n = tl.load(gx + 2 * H, mask=m2, other=0.0).to(ACC)
    r = tl.sigmoid(x_r + h_r)
    z = tl.sigmoid(x_z + h_z)
    n = _tanh(x_n + r * h_n)
    h_new = (1.0 - z) * n + z * h
    out_t = h_new
    if HAS_LEN:
        # masked steps output 0, keep the state, leave zeros (and the state) in ws
        active = (t < lens)[:, None]
        r = tl.where(active, r, 0.0)
        z = tl.where(active, z, 0.0)
        n = tl.where(active, n, 0.0)
        h_n = tl.where(active, h_n, 0.0)
        out_t = tl.where(active, h_new, 0.0)
        h_new = tl.where(active, h_new, h)
    if SAVE:
        ws = ws_ptr + row * (5 * H) + rj[None, :]
        tl.store(ws, r.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(ws + H, z.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(ws + 2 * H, n.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(ws + 3 * H, h_n.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(ws + 4 * H, h.to(ws_ptr.dtype.element_ty), mask=m2)
    tl.store(out_ptr + row * H + rj[None, :], out_t.to(out_ptr.dtype.element_ty), mask=m2)
    return h_new


@triton.jit
def _gru_bwd_cell(go_ptr, ws_ptr, dgx_ptr, dgh_ptr, row, rj, H, m2, dh, lens, t,
                  HAS_LEN: tl.constexpr, ACC: tl.constexpr):
    """Step t's gate gradients from dh (the gradient of h_t from the later steps): stores dG_x and
    dG_h and returns them (d_r, d_z, d_hn) with the direct part of dh_{t-1}: d * z (dh itself
    where the step was masked)."""
    ws = ws_ptr + row * (5 * H) + rj[None, :]
    r = tl.load(ws, mask=m2, other=0.0).to(ACC)
    z = tl.load(ws + H, mask=m2, other=0.0).to(ACC)
    n = tl.load(ws + 2 * H, mask=m2, other=0.0).to(ACC)
    gh_n = tl.load(ws + 3 * H, mask=m2, other=0.0).to(ACC)
    h_prev = tl.load(ws + 4 * H, mask=m2, other=0.0).to(ACC)
    d = dh + tl.load(go_ptr + row * H + rj[None, :], mask=m2, other=0.0).to(ACC)
    d_n = d * (1.0 - z) * (1.0 - n * n)
    d_hn = d_n * r
    d_r = d_n * gh_n * r * (1.0 - r)
    d_z = d * (h_prev - n) * z * (1.0 - z)
    carry = d * z
    if HAS_LEN:  # a masked step carried the state through; out[t] was a constant 0
        active = (t < lens)[:, None]
        d_n = tl.where(active, d_n, 0.0)
        d_hn = tl.where(active, d_hn, 0.0)
        d_r = tl.where(active, d_r, 0.0)
        d_z = tl.where(active, d_z, 0.0)
        carry = tl.where(active, carry, dh)
    gx = dgx_ptr + row * (3 * H) + rj[None, :]
    tl.store(gx, d_r.to(dgx_ptr.dtype.element_ty), mask=m2)
    tl.store(gx + H, d_z.to(dgx_ptr.dtype.element_ty), mask=m2)
    tl.store(gx + 2 * H, d_n.to(dgx_ptr.dtype.element_ty), mask=m2)
    gh = dgh_ptr + row * (3 * H) + rj[None, :]
    tl.store(gh, d_r.to(dgh_ptr.dtype.element_ty), mask=m2)
    tl.store(gh + H, d_z.to(dgh_ptr.dtype.element_ty), mask=m2)
    tl.store(gh + 2 * H, d_hn.to(dgh_ptr.dtype.element_ty), mask=m2)
    return d_r, d_z, d_hn, carry


# ------------------------------------------------------------------ resident path

@triton.jit
def _gru_fwd_kernel(gx_ptr, h0_ptr, w_ptr, b_ptr, len_ptr, out_ptr, hn_ptr, ws_ptr, T, B, H,
                    HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
                    ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb, rj, m2 = tile(B, H, BLOCK_B, BLOCK_H)
    wt_r = weight_tile(w_ptr, 0, H, BLOCK_H, TRANSPOSED=True)
    wt_z = weight_tile(w_ptr, 1, H, BLOCK_H, TRANSPOSED=True)
    wt_n = weight_tile(w_ptr, 2, H, BLOCK_H, TRANSPOSED=True)
    b_r = bias_row(b_ptr, 0, H, rj, HAS_BIAS, ACC)
    b_z = bias_row(b_ptr, 1, H, rj, HAS_BIAS, ACC)
    b_n = bias_row(b_ptr, 2, H, rj, HAS_BIAS, ACC)
    state = rb[:, None] * H + rj[None, :]
    h = tl.load(h0_ptr + state, mask=m2, other=0.0).to(ACC)
    lens = load_lengths(len_ptr, rb, B, HAS_LEN)
    for s in range(T):
        t = time_index(s, T, REVERSE)
        hw = h.to(wt_r.dtype)
        h_r = tl.dot(hw, wt_r, input_precision=PRECISION, out_dtype=ACC) + b_r[None, :]
        h_z = tl.dot(hw, wt_z, input_precision=PRECISION, out_dtype=ACC) + b_z[None, :]
        h_n = tl.dot(hw, wt_n, input_precision=PRECISION, out_dtype=ACC) + b_n[None, :]
        h_new = _gru_fwd_cell(gx_ptr, ws_ptr, out_ptr, t * B + rb[:, None], rj, H, m2, h, h_r, h_z, h_n,
                              lens, t, HAS_LEN, SAVE, ACC)
        h = tl.where(m2, h_new, 0.0)  # padding stays 0: in the next dot, inf * 0 would be NaN
    tl.store(hn_ptr + state, h.to(hn_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _gru_bwd_kernel(go_ptr, ghn_ptr, ws_ptr, w_ptr, len_ptr, dgx_ptr, dgh_ptr, dh0_ptr, T, B, H,
                    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                    ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb, rj, m2 = tile(B, H, BLOCK_B, BLOCK_H)
    w_r = weight_tile(w_ptr, 0, H, BLOCK_H, TRANSPOSED=False)  # dh_prev += dG_g @ w_g
    w_z = weight_tile(w_ptr, 1, H, BLOCK_H, TRANSPOSED=False)
    w_n = weight_tile(w_ptr, 2, H, BLOCK_H, TRANSPOSED=False)
    state = rb[:, None] * H + rj[None, :]
    dh = tl.load(ghn_ptr + state, mask=m2, other=0.0).to(ACC)
    lens = load_lengths(len_ptr, rb, B, HAS_LEN)
    for s in range(T):  # the forward order, reversed
        t = time_index(s, T, not REVERSE)
        d_r, d_z, d_hn, dprev = _gru_bwd_cell(go_ptr, ws_ptr, dgx_ptr, dgh_ptr, t * B + rb[:, None], rj, H, m2,
                                              dh, lens, t, HAS_LEN, ACC)
        dprev += tl.dot(d_r.to(w_r.dtype), w_r, input_precision=PRECISION, out_dtype=ACC)
        dprev += tl.dot(d_z.to(w_z.dtype), w_z, input_precision=PRECISION, out_dtype=ACC)
        dprev += tl.dot(d_hn.to(w_n.dtype), w_n, input_precision=PRECISION, out_dtype=ACC)
        if HAS_LEN:  # masked: dh passes unchanged (even where W_hh is not finite)
            dprev = tl.where((t < lens)[:, None], dprev, dh)
        dh = tl.where(m2, dprev, 0.0)  # padding stays 0 (as in the forward)
    tl.store(dh0_ptr + state, dh.to(dh0_ptr.dtype.element_ty), mask=m2)


# ------------------------------------------------------------------ per-step path

@triton.jit
def _gru_fwd_step_kernel(gx_ptr, gh_ptr, h_ptr, len_ptr, out_ptr, h_next_ptr, ws_ptr, t, B, H,
                         HAS_LEN: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr,
                         BLOCK_H: tl.constexpr):
    """Step t given gh = W_hh h + b_hh (B, 3H) and the state h (B, H), both in ACC."""
    rb, rj, m2 = tile(B, H, BLOCK_B, BLOCK_H)
    state = rb[:, None] * H + rj[None, :]
    gh = gh_ptr + rb[:, None] * (3 * H) + rj[None, :]
    h_r = tl.load(gh, mask=m2, other=0.0)
    h_z = tl.load(gh + H, mask=m2, other=0.0)
    h_n = tl.load(gh + 2 * H, mask=m2, other=0.0)
    h = tl.load(h_ptr + state, mask=m2, other=0.0)
    lens = load_lengths(len_ptr, rb, B, HAS_LEN)
    h_new = _gru_fwd_cell(gx_ptr, ws_ptr, out_ptr, t * B + rb[:, None], rj, H, m2, h, h_r, h_z, h_n,
                          lens, t, HAS_LEN, SAVE, ACC)
    tl.store(h_next_ptr + state, h_new, mask=m2)


@triton.jit
def _gru_bwd_step_kernel(go_ptr, dh_ptr, ws_ptr, len_ptr, dgx_ptr, dgh_ptr, carry_ptr, t, B, H,
                         HAS_LEN: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Step t's gate gradients and the direct part of dh_{t-1} (into carry, ACC)."""
    rb, rj, m2 = tile(B, H, BLOCK_B, BLOCK_H)
    state = rb[:, None] * H + rj[None, :]
    dh = tl.load(dh_ptr + state, mask=m2, other=0.0)
    lens = load_lengths(len_ptr, rb, B, HAS_LEN)
    _, _, _, carry = _gru_bwd_cell(go_ptr, ws_ptr, dgx_ptr, dgh_ptr, t * B + rb[:, None], rj, H, m2, dh,
                                   lens, t, HAS_LEN, ACC)
    tl.store(carry_ptr + state, carry, mask=m2)


# ------------------------------------------------------------------ launchers

def gru_forward(gates_x, h0, w_hh, b_hh, reverse, lengths, save=True):
    """save=False: no workspace is written (an empty one, (0,), comes back)."""
    T, B, H = gates_x.shape[0], gates_x.shape[1], h0.shape[1]
    gates_x, h0, w_hh = gates_x.contiguous(), h0.contiguous(), w_hh.contiguous()
    out = gates_x.new_empty((T, B, H))
    ws = gates_x.new_empty((T, B, 5 * H) if save else (0,))
    ws_arg = ws if save else out  # a pointer the kernels never store to
    if not resident(3, H, h0.dtype):
        h_n = forward_steps(_gru_fwd_step_kernel, gates_x, h0, w_hh, b_hh, reverse, lengths, out, ws_arg,
                            SAVE=save)
        return out, h_n, ws
    h_n = h0.new_empty((B, H))
    block_b, block_h = block_sizes(B, H)
    wrap_triton(_gru_fwd_kernel)[(triton.cdiv(B, block_b),)](
        gates_x, h0, w_hh, b_hh.contiguous() if b_hh is not None else w_hh,
        lengths if lengths is not None else h0, out, h_n, ws_arg, T, B, H,
        HAS_BIAS=b_hh is not None, HAS_LEN=lengths is not None, REVERSE=reverse, SAVE=save,
        ACC=compute_dtype(h0.dtype), PRECISION=dot_precision(h0.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h, num_warps=RESIDENT_NUM_WARPS)
    return out, h_n, ws


def gru_backward(grad_out, grad_h_n, ws, w_hh, reverse, lengths):
    T, B, H = grad_out.shape
    grad_out, grad_h_n, ws, w_hh = grad_out.contiguous(), grad_h_n.contiguous(), ws.contiguous(), w_hh.contiguous()
    dgx = grad_out.new_empty((T, B, 3 * H))
    dgh = grad_out.new_empty((T, B, 3 * H))
    if not resident(3, H, grad_out.dtype):
        dh0 = backward_steps(_gru_bwd_step_kernel, grad_out, grad_h_n, ws, w_hh, reverse, lengths, (dgx, dgh))
        return dgx, dgh, dh0
    dh0 = grad_h_n.new_empty((B, H))
    block_b, block_h = block_sizes(B, H)
    wrap_triton(_gru_bwd_kernel)[(triton.cdiv(B, block_b),)](
        grad_out, grad_h_n, ws, w_hh, lengths if lengths is not None else grad_h_n, dgx, dgh, dh0, T, B, H,
        HAS_LEN=lengths is not None, REVERSE=reverse,
        ACC=compute_dtype(grad_out.dtype), PRECISION=dot_precision(grad_out.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h, num_warps=RESIDENT_NUM_WARPS)
    return dgx, dgh, dh0


__all__ = ["gru_forward", "gru_backward"]
