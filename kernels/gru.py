"""Triton GRU recurrence (one layer, one direction): the whole time loop in one launch.

One program owns BLOCK_B batch rows for all T steps. It loads the three (H, H) blocks of
W_hh once into registers and keeps the state h in registers; per step it reads the
pre-projected input gates, does three tl.dot's (fp32 accumulation, IEEE fp32 for float32
inputs) and the fused gate math, and writes the output and the workspace. Backward is the
same shape: dh stays in registers, dh_prev = dh * z + dG_h W_hh per step. Sizes are padded
to powers of two (>= 16 for tl.dot) and masked. Resident weights suit H up to ~128 on a GPU.

Workspace (T, B, 5H) = [r, z, n, W_hn h_prev + b_hn, h_prev], as every hnrnn backend.
Launchers go through wrap_triton (_common) so the ops trace under torch.compile.
"""
import triton
import triton.language as tl

from hnrnn.kernels._common import block_sizes, compute_dtype, dot_precision, wrap_triton


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _gru_fwd_kernel(gx_ptr, h0_ptr, w_ptr, b_ptr, len_ptr, out_ptr, hn_ptr, ws_ptr, T, B, H,
                    HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                    ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rj = tl.arange(0, BLOCK_H)
    mb = rb < B
    mj = rj < H
    m2 = mb[:, None] & mj[None, :]
    # transposed tiles: wt_g[k, j] = W_hh[g * H + j, k], so gh_g = h @ wt_g
    kk = rj[:, None]
    jj = rj[None, :]
    wm = (kk < H) & (jj < H)
    wt_r = tl.load(w_ptr + jj * H + kk, mask=wm, other=0.0)
    wt_z = tl.load(w_ptr + (H + jj) * H + kk, mask=wm, other=0.0)
    wt_n = tl.load(w_ptr + (2 * H + jj) * H + kk, mask=wm, other=0.0)
    if HAS_BIAS:
        b_r = tl.load(b_ptr + rj, mask=mj, other=0.0).to(ACC)
        b_z = tl.load(b_ptr + H + rj, mask=mj, other=0.0).to(ACC)
        b_n = tl.load(b_ptr + 2 * H + rj, mask=mj, other=0.0).to(ACC)
    else:
        b_r = tl.zeros([BLOCK_H], dtype=ACC)
        b_z = tl.zeros([BLOCK_H], dtype=ACC)
        b_n = tl.zeros([BLOCK_H], dtype=ACC)
    h = tl.load(h0_ptr + rb[:, None] * H + rj[None, :], mask=m2, other=0.0).to(ACC)
    if HAS_LEN:
        lens = tl.load(len_ptr + rb, mask=mb, other=0)
    for s in range(T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        row = t * B + rb[:, None]
        gx = gx_ptr + row * (3 * H) + rj[None, :]
        x_r = tl.load(gx, mask=m2, other=0.0).to(ACC)
        x_z = tl.load(gx + H, mask=m2, other=0.0).to(ACC)
        x_n = tl.load(gx + 2 * H, mask=m2, other=0.0).to(ACC)
        hw = h.to(wt_r.dtype)
        h_r = tl.dot(hw, wt_r, input_precision=PRECISION, out_dtype=ACC) + b_r[None, :]
        h_z = tl.dot(hw, wt_z, input_precision=PRECISION, out_dtype=ACC) + b_z[None, :]
        h_n = tl.dot(hw, wt_n, input_precision=PRECISION, out_dtype=ACC) + b_n[None, :]
        r = tl.sigmoid(x_r + h_r)
        z = tl.sigmoid(x_z + h_z)
        n = _tanh(x_n + r * h_n)
        h_new = (1.0 - z) * n + z * h
        if HAS_LEN:
            # masked steps output 0, keep the state, leave zeros (and the state) in ws
            active = (t < lens)[:, None]
            r = tl.where(active, r, 0.0)
            z = tl.where(active, z, 0.0)
            n = tl.where(active, n, 0.0)
            h_n = tl.where(active, h_n, 0.0)
            out_t = tl.where(active, h_new, 0.0)
            h_new = tl.where(active, h_new, h)
        else:
            out_t = h_new
        ws = ws_ptr + row * (5 * H) + rj[None, :]
        tl.store(ws, r.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(ws + H, z.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(ws + 2 * H, n.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(ws + 3 * H, h_n.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(ws + 4 * H, h.to(ws_ptr.dtype.element_ty), mask=m2)
        tl.store(out_ptr + row * H + rj[None, :], out_t.to(out_ptr.dtype.element_ty), mask=m2)
        h = tl.where(m2, h_new, 0.0)  # padding stays 0: in the next dot, inf * 0 would be NaN
    tl.store(hn_ptr + rb[:, None] * H + rj[None, :], h.to(hn_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _gru_bwd_kernel(go_ptr, ghn_ptr, ws_ptr, w_ptr, len_ptr, dgx_ptr, dgh_ptr, dh0_ptr, T, B, H,
                    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
                    ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rj = tl.arange(0, BLOCK_H)
    mb = rb < B
    mj = rj < H
    m2 = mb[:, None] & mj[None, :]
    # untransposed tiles: w_g[j, k] = W_hh[g * H + j, k], so dh_prev += dG_g @ w_g
    jj = rj[:, None]
    kk = rj[None, :]
    wm = (jj < H) & (kk < H)
    w_r = tl.load(w_ptr + jj * H + kk, mask=wm, other=0.0)
    w_z = tl.load(w_ptr + (H + jj) * H + kk, mask=wm, other=0.0)
    w_n = tl.load(w_ptr + (2 * H + jj) * H + kk, mask=wm, other=0.0)
    dh = tl.load(ghn_ptr + rb[:, None] * H + rj[None, :], mask=m2, other=0.0).to(ACC)
    if HAS_LEN:
        lens = tl.load(len_ptr + rb, mask=mb, other=0)
    for s in range(T):  # the forward order, reversed
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        row = t * B + rb[:, None]
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
        if HAS_LEN:
            active = (t < lens)[:, None]
            d_n = tl.where(active, d_n, 0.0)
            d_hn = tl.where(active, d_hn, 0.0)
            d_r = tl.where(active, d_r, 0.0)
            d_z = tl.where(active, d_z, 0.0)
        dprev = d * z
        dprev += tl.dot(d_r.to(w_r.dtype), w_r, input_precision=PRECISION, out_dtype=ACC)
        dprev += tl.dot(d_z.to(w_z.dtype), w_z, input_precision=PRECISION, out_dtype=ACC)
        dprev += tl.dot(d_hn.to(w_n.dtype), w_n, input_precision=PRECISION, out_dtype=ACC)
        if HAS_LEN:  # a masked step carried the state through; out[t] was a constant 0
            dprev = tl.where(active, dprev, dh)
        gx = dgx_ptr + row * (3 * H) + rj[None, :]
        tl.store(gx, d_r.to(dgx_ptr.dtype.element_ty), mask=m2)
        tl.store(gx + H, d_z.to(dgx_ptr.dtype.element_ty), mask=m2)
        tl.store(gx + 2 * H, d_n.to(dgx_ptr.dtype.element_ty), mask=m2)
        gh = dgh_ptr + row * (3 * H) + rj[None, :]
        tl.store(gh, d_r.to(dgh_ptr.dtype.element_ty), mask=m2)
        tl.store(gh + H, d_z.to(dgh_ptr.dtype.element_ty), mask=m2)
        tl.store(gh + 2 * H, d_hn.to(dgh_ptr.dtype.element_ty), mask=m2)
        dh = tl.where(m2, dprev, 0.0)  # padding stays 0 (as in the forward)
    tl.store(dh0_ptr + rb[:, None] * H + rj[None, :], dh.to(dh0_ptr.dtype.element_ty), mask=m2)


def gru_forward(gates_x, h0, w_hh, b_hh, reverse, lengths):
    T, B, H = gates_x.shape[0], gates_x.shape[1], h0.shape[1]
    gates_x, h0, w_hh = gates_x.contiguous(), h0.contiguous(), w_hh.contiguous()
    out = gates_x.new_empty((T, B, H))
    h_n = h0.new_empty((B, H))
    ws = gates_x.new_empty((T, B, 5 * H))
    block_b, block_h = block_sizes(B, H)
    grid = (triton.cdiv(B, block_b),)
    wrap_triton(_gru_fwd_kernel)[grid](
        gates_x, h0, w_hh, b_hh.contiguous() if b_hh is not None else w_hh,
        lengths if lengths is not None else h0, out, h_n, ws, T, B, H,
        HAS_BIAS=b_hh is not None, HAS_LEN=lengths is not None, REVERSE=reverse,
        ACC=compute_dtype(h0.dtype), PRECISION=dot_precision(h0.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h)
    return out, h_n, ws


def gru_backward(grad_out, grad_h_n, ws, w_hh, reverse, lengths):
    T, B, H = grad_out.shape
    grad_out, grad_h_n, ws, w_hh = grad_out.contiguous(), grad_h_n.contiguous(), ws.contiguous(), w_hh.contiguous()
    dgx = grad_out.new_empty((T, B, 3 * H))
    dgh = grad_out.new_empty((T, B, 3 * H))
    dh0 = grad_h_n.new_empty((B, H))
    block_b, block_h = block_sizes(B, H)
    grid = (triton.cdiv(B, block_b),)
    wrap_triton(_gru_bwd_kernel)[grid](
        grad_out, grad_h_n, ws, w_hh, lengths if lengths is not None else grad_h_n, dgx, dgh, dh0, T, B, H,
        HAS_LEN=lengths is not None, REVERSE=reverse,
        ACC=compute_dtype(grad_out.dtype), PRECISION=dot_precision(grad_out.dtype),
        BLOCK_B=block_b, BLOCK_H=block_h)
    return dgx, dgh, dh0


__all__ = ["gru_forward", "gru_backward"]
