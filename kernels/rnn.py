"""Triton vanilla-RNN recurrence (tanh or relu), one layer and direction, time loop in one launch.

Same design as kernels/gru.py with one gate: W_hh (H, H) resident in registers per program
of BLOCK_B batch rows, the state in registers, one tl.dot per step. Workspace (T, B, 2H) =
[h, h_prev], as every hnrnn backend.
"""
import triton
import triton.language as tl

from hnrnn.kernels._common import block_sizes, compute_dtype, dot_precision, wrap_triton


@triton.jit
def _act(x, RELU: tl.constexpr):
    if RELU:
        return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    else:
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _rnn_fwd_kernel(gx_ptr, h0_ptr, w_ptr, b_ptr, len_ptr, out_ptr, hn_ptr, ws_ptr, T, B, H,
                    HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr,
                    ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rj = tl.arange(0, BLOCK_H)
    mb = rb < B
    mj = rj < H
    m2 = mb[:, None] & mj[None, :]
    kk = rj[:, None]
    jj = rj[None, :]
    wt = tl.load(w_ptr + jj * H + kk, mask=(kk < H) & (jj < H), other=0.0)  # wt[k, j] = W_hh[j, k]
    if HAS_BIAS:
        b = tl.load(b_ptr + rj, mask=mj, other=0.0).to(ACC)
    else:
        b = tl.zeros([BLOCK_H], dtype=ACC)
    h = tl.load(h0_ptr + rb[:, None] * H + rj[None, :], mask=m2, other=0.0).to(ACC)
    if HAS_LEN:
        lens = tl.load(len_ptr + rb, mask=mb, other=0)
    for s in range(T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        row = t * B + rb[:, None]
        x = tl.load(gx_ptr + row * H + rj[None, :], mask=m2, other=0.0).to(ACC)
        pre = x + tl.dot(h.to(wt.dtype), wt, input_precision=PRECISION, out_dtype=ACC) + b[None, :]
        h_new = _act(pre, RELU)
        if HAS_LEN:
            active = (t < lens)[:, None]
            out_t = tl.where(active, h_new, 0.0)
            h_new = tl.where(active, h_new, h)
        else:
            out_t = h_new
        ws = ws_ptr + row * (2 * H) + rj[None, :]
        tl.store(ws, out_t.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(ws + H, h.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(out_ptr + row * H + rj[None, :], out_t.to(out_ptr.dtype.element_ty), mask=m2)
        h = tl.where(m2, h_new, 0.0)  # padding stays 0: in the next dot, inf * 0 would be NaN
    tl.store(hn_ptr + rb[:, None] * H + rj[None, :], h.to(hn_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _rnn_bwd_kernel(go_ptr, ghn_ptr, ws_ptr, w_ptr, len_ptr, dg_ptr, dh0_ptr, T, B, H,
                    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, RELU: tl.constexpr,
                    ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rj = tl.arange(0, BLOCK_H)
    mb = rb < B
    mj = rj < H
    m2 = mb[:, None] & mj[None, :]
    jj = rj[:, None]
    kk = rj[None, :]
    w = tl.load(w_ptr + jj * H + kk, mask=(jj < H) & (kk < H), other=0.0)  # w[j, k] = W_hh[j, k]
    dh = tl.load(ghn_ptr + rb[:, None] * H + rj[None, :], mask=m2, other=0.0).to(ACC)
    if HAS_LEN:
        lens = tl.load(len_ptr + rb, mask=mb, other=0)
    for s in range(T):
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        row = t * B + rb[:, None]
        h = tl.load(ws_ptr + row * (2 * H) + rj[None, :], mask=m2, other=0.0).to(ACC)
        d = dh + tl.load(go_ptr + row * H + rj[None, :], mask=m2, other=0.0).to(ACC)
        if RELU:
            g = tl.where(h <= 0.0, 0.0, d)  # torch's threshold_backward: NaN h passes d
        else:
            g = d * (1.0 - h * h)
        if HAS_LEN:
            active = (t < lens)[:, None]
            g = tl.where(active, g, 0.0)
        dprev = tl.dot(g.to(w.dtype), w, input_precision=PRECISION, out_dtype=ACC)
        if HAS_LEN:
            dprev = tl.where(active, dprev, dh)
        tl.store(dg_ptr + row * H + rj[None, :], g.to(dg_ptr.dtype.element_ty), mask=m2)
        dh = tl.where(m2, dprev, 0.0)  # padding stays 0 (as in the forward)
    tl.store(dh0_ptr + rb[:, None] * H + rj[None, :], dh.to(dh0_ptr.dtype.element_ty), mask=m2)


def rnn_forward(gates_x, h0, w_hh, b_hh, relu, reverse, lengths):
    T, B, H = gates_x.shape[0], gates_x.shape[1], h0.shape[1]
    gates_x, h0, w_hh = gates_x.contiguous(), h0.contiguous(), w_hh.contiguous()
    out = gates_x.new_empty((T, B, H))
    h_n = h0.new_empty((B, H))
    ws = gates_x.new_empty((T, B, 2 * H))
    block_b, block_h = block_sizes(B, H)
    wrap_triton(_rnn_fwd_kernel)[(triton.cdiv(B, block_b),)](
        gates_x, h0, w_hh, b_hh.contiguous() if b_hh is not None else w_hh,
        lengths if lengths is not None else h0, out, h_n, ws, T, B, H,
        HAS_BIAS=b_hh is not None, HAS_LEN=lengths is not None, REVERSE=reverse, RELU=relu,
        ACC=compute_dtype(h0.dtype), PRECISION=dot_precision(h0.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h)
    return out, h_n, ws


def rnn_backward(grad_out, grad_h_n, ws, w_hh, relu, reverse, lengths):
    T, B, H = grad_out.shape
    grad_out, grad_h_n, ws, w_hh = grad_out.contiguous(), grad_h_n.contiguous(), ws.contiguous(), w_hh.contiguous()
    dg = grad_out.new_empty((T, B, H))
    dh0 = grad_h_n.new_empty((B, H))
    block_b, block_h = block_sizes(B, H)
    wrap_triton(_rnn_bwd_kernel)[(triton.cdiv(B, block_b),)](
        grad_out, grad_h_n, ws, w_hh, lengths if lengths is not None else grad_h_n, dg, dh0, T, B, H,
        HAS_LEN=lengths is not None, REVERSE=reverse, RELU=relu,
        ACC=compute_dtype(grad_out.dtype), PRECISION=dot_precision(grad_out.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h)
    return dg, dh0
