"""Triton kernels of the zoo cell and their launchers, registered by hnrnn.ops.zoo_cell as the
triton_ops hnrnn::zoo_cell_forward_triton / hnrnn::zoo_cell_backward_triton (same schemas as the
compiled hnrnn::zoo_cell_forward / zoo_cell_backward).

Two paths each way:
- whole sequence in one program (`_fwd_seq_kernel`, `_bwd_seq_kernel`) when the weight and the
  (B, H) state fit on chip (use_sequence_kernel: after padding H <= 128 and B up to 512 / 256 /
  128 / 32 at H = 16 / 32 / 64 / 128): one launch runs the whole time loop with W, h and the
  BatchNorm statistics on chip;
- otherwise one launch per step (`_fwd_step_kernel`, `_bwd_step_kernel`): each program owns a
  block of features for the whole batch, so BatchNorm statistics stay in-program (BN is per
  feature); the recurrent product of the backward (dx = dz W) is a GEMM per step.
After the backward loop, dW = dZ^T X is one GEMM over all T*B rows, db a column sum, and dE a
deterministic segment sum over the ids sorted once (`_segment_sum_kernel`: no atomics).
skip_first_linear (the lesson's Model0): step 0 has no linear layer, r_0 = ReLU(x_0), so dx_0 = dz_0
and dW, db sum over the steps from 1.

Out-of-range ids (only reachable when the entry point's host check is skipped, i.e. under
torch.compile) read a NaN embedding row instead of memory out of bounds.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from hnrnn.kernels._common import tile, weight_tile, wrap_triton

# Limits of the one-program paths (padded sizes): H <= SEQ_MAX_H, and the shared memory their
# backward kernel asks for, compiled for sm_90 about 4 H^2 + 22 B H bytes (W and five (B, H) tiles
# staged for its dots), within the 227 KiB a block gets on H100 / H200 with some margin
# (tests/test_triton_compile.py compiles the corners of this rule). A test hook forces the per-step paths.
SEQ_MAX_H = 128
SEQ_MAX_SHARED_BYTES = 200 * 1024
FORCE_STEP_PATH = False
# W, h and a few (B, H) temporaries live in registers: with 4 warps the one-program and per-step
# kernels spill (up to 3.8 KB a thread at the largest tiles, compiled for sm_90), with 8 at most a
# few hundred bytes.
NUM_WARPS = 8
STEP_BLOCK_B = 128  # rows per block in the per-step kernels (tests lower it to cover several blocks)


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot needs every dimension >= 16


def use_sequence_kernel(B: int, H: int) -> bool:
    b, h = _pow2(B), _pow2(H)
    return not FORCE_STEP_PATH and h <= SEQ_MAX_H and 4 * h * h + 22 * b * h <= SEQ_MAX_SHARED_BYTES


# -----------------------------------------------------------------------------------------------
# Forward
# -----------------------------------------------------------------------------------------------

@triton.jit
def _relu(z):
    return tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu


@triton.jit
def _gather_x(ids_ptr, h_ptr, h_stride, emb_ptr, rows, cols, t, B, T, H, V):
    """x = h_{t-1} + E[ids_t] for the given rows and feature columns (0 outside the problem)."""
    mr = rows < B
    mc = cols < H
    m2 = mr[:, None] & mc[None, :]
    ids = tl.load(ids_ptr + rows * T + t, mask=mr, other=0)
    ok = (ids >= 0) & (ids < V)
    e = tl.load(emb_ptr + ids[:, None] * H + cols[None, :], mask=m2 & ok[:, None], other=0.0)
    e = tl.where(ok[:, None] | (~m2), e, float("nan"))
    h = tl.load(h_ptr + rows[:, None] * h_stride + cols[None, :], mask=m2, other=0.0)
    return h + e


@triton.jit
def _fwd_seq_kernel(ids_ptr, h0_ptr, emb_ptr, w_ptr, b_ptr, g_ptr, beta_ptr, rm_ptr, rv_ptr,
                    out_ptr, hT_ptr, xs_ptr, rs_ptr, mean_ptr, invstd_ptr, rm_out_ptr, rv_out_ptr,
                    B, T, H, V, momentum, eps, inv_b, unbias,
                    NORM_STATE: tl.constexpr, TRAINING: tl.constexpr, SKIP_FIRST_LINEAR: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rows, cols, m2 = tile(B, H, BLOCK_B, BLOCK_H)  # one program: the whole batch
    mc = cols < H
    bh = rows[:, None] * H + cols[None, :]
    wt = weight_tile(w_ptr, 0, H, BLOCK_H, TRANSPOSED=True)  # W^T on chip for the whole loop
    bias = tl.load(b_ptr + cols, mask=mc, other=0.0)
    gamma = tl.load(g_ptr + cols, mask=mc, other=0.0)
    beta = tl.load(beta_ptr + cols, mask=mc, other=0.0)
    rm = tl.load(rm_ptr + cols, mask=mc, other=0.0)
    rv = tl.load(rv_ptr + cols, mask=mc, other=1.0)
    mean = rm
    invstd = 1.0 / tl.sqrt(rv + eps)
    h = tl.load(h0_ptr + bh, mask=m2, other=0.0)
    for t in range(T):
        ids = tl.load(ids_ptr + rows * T + t, mask=rows < B, other=0)
        ok = (ids >= 0) & (ids < V)
        e = tl.load(emb_ptr + ids[:, None] * H + cols[None, :], mask=m2 & ok[:, None], other=0.0)
        x = h + tl.where(ok[:, None] | (~m2), e, float("nan"))
        tl.store(xs_ptr + t * B * H + bh, x, mask=m2)
        z = tl.dot(x, wt, input_precision="ieee") + bias[None, :]
        if SKIP_FIRST_LINEAR:
            z = tl.where(t == 0, x, z)
        r = tl.where(m2, _relu(z), 0.0)  # padded rows must not enter the statistics
        tl.store(rs_ptr + t * B * H + bh, r, mask=m2)
        if TRAINING:
            mean = tl.sum(r, 0) * inv_b
            d = tl.where(m2, r - mean[None, :], 0.0)
            var = tl.sum(d * d, 0) * inv_b
            invstd = 1.0 / tl.sqrt(var + eps)
            rm = (1.0 - momentum) * rm + momentum * mean
            rv = (1.0 - momentum) * rv + momentum * var * unbias
        tl.store(mean_ptr + t * H + cols, mean, mask=mc)
        tl.store(invstd_ptr + t * H + cols, invstd, mask=mc)
        scale = invstd * gamma
        o = r * scale[None, :] + (beta - mean * scale)[None, :]  # torch's CPU batch-norm form (zoo_cell.h)
        tl.store(out_ptr + rows[:, None] * (T * H) + t * H + cols[None, :], o, mask=m2)
        if NORM_STATE:
            h = tl.where(m2, o, 0.0)
        else:
            h = r
    tl.store(hT_ptr + bh, h, mask=m2)
    tl.store(rm_out_ptr + cols, rm, mask=mc)  # the updated running statistics (in eval, a copy)
    tl.store(rv_out_ptr + cols, rv, mask=mc)


@triton.jit
def _fwd_step_kernel(ids_ptr, h_ptr, h_stride, emb_ptr, w_ptr, b_ptr, g_ptr, beta_ptr, rm_ptr, rv_ptr,
                     out_ptr, xs_ptr, rs_ptr, mean_ptr, invstd_ptr,
                     t, B, T, H, V, momentum, eps, inv_b, unbias,
                     TRAINING: tl.constexpr, LINEAR: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """Step t for the features [pid * BLOCK_N, ...) and every row of the batch (LINEAR false:
    r = ReLU(x), step 0 of skip_first_linear)."""
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mc = cols < H
    bias = tl.load(b_ptr + cols, mask=mc, other=0.0)
    # Pass 1: r = ReLU(x W^T + b) by row blocks, with the batch mean / M2 combined block by block
    # (Chan et al.), so any batch size works.
    cnt = 0.0
    mean = tl.zeros([BLOCK_N], dtype=tl.float32)
    m2acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        mr = rows < B
        m2 = mr[:, None] & mc[None, :]
        if LINEAR:
            acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                mk = ks < H
                x = _gather_x(ids_ptr, h_ptr, h_stride, emb_ptr, rows, ks, t, B, T, H, V)
                if pid == 0:  # every program computes x; one stores it for the backward
                    tl.store(xs_ptr + rows[:, None] * H + ks[None, :], x, mask=mr[:, None] & mk[None, :])
                wt = tl.load(w_ptr + cols[None, :] * H + ks[:, None], mask=mk[:, None] & mc[None, :], other=0.0)
                acc += tl.dot(x, wt, input_precision="ieee")
            z = acc + bias[None, :]
        else:  # each program stores its own columns of x
            z = _gather_x(ids_ptr, h_ptr, h_stride, emb_ptr, rows, cols, t, B, T, H, V)
            tl.store(xs_ptr + rows[:, None] * H + cols[None, :], z, mask=m2)
        r = tl.where(m2, _relu(z), 0.0)
        tl.store(rs_ptr + rows[:, None] * H + cols[None, :], r, mask=m2)
        if TRAINING:
            n_b = tl.minimum(B - b0, BLOCK_B).to(tl.float32)
            bmean = tl.sum(r, 0) / n_b
            d = tl.where(m2, r - bmean[None, :], 0.0)
            bm2 = tl.sum(d * d, 0)
            tot = cnt + n_b
            delta = bmean - mean
            mean = mean + delta * (n_b / tot)
            m2acc = m2acc + bm2 + delta * delta * (cnt * n_b / tot)
            cnt = tot
    rm = tl.load(rm_ptr + cols, mask=mc, other=0.0)
    rv = tl.load(rv_ptr + cols, mask=mc, other=1.0)
    if TRAINING:
        var = m2acc * inv_b
        invstd = 1.0 / tl.sqrt(var + eps)
        tl.store(rm_ptr + cols, (1.0 - momentum) * rm + momentum * mean, mask=mc)
        tl.store(rv_ptr + cols, (1.0 - momentum) * rv + momentum * var * unbias, mask=mc)
    else:
        mean = rm
        invstd = 1.0 / tl.sqrt(rv + eps)
    tl.store(mean_ptr + cols, mean, mask=mc)
    tl.store(invstd_ptr + cols, invstd, mask=mc)
    gamma = tl.load(g_ptr + cols, mask=mc, other=0.0)
    beta = tl.load(beta_ptr + cols, mask=mc, other=0.0)
    scale = invstd * gamma
    shift = beta - mean * scale  # torch's CPU batch-norm form (zoo_cell.h)
    tl.debug_barrier()  # r written above by other threads of this program
    # Pass 2: normalise.
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        m2 = (rows < B)[:, None] & mc[None, :]
        r = tl.load(rs_ptr + rows[:, None] * H + cols[None, :], mask=m2, other=0.0)
        o = r * scale[None, :] + shift[None, :]
        tl.store(out_ptr + rows[:, None] * (T * H) + cols[None, :], o, mask=m2)


def zoo_cell_forward_triton(ids: Tensor, h0: Tensor, emb: Tensor, weight: Tensor, bias: Tensor,
                            bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
                            norm_state: bool, training: bool, momentum: float, eps: float,
                            skip_first_linear: bool = False
                            ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if h0.dtype != torch.float32:
        raise TypeError(f"zoo_cell: the triton backend computes in float32, got {h0.dtype}")
    B, T = ids.shape
    V, H = emb.shape
    out = h0.new_empty(B, T, H)
    xs = h0.new_empty(T, B, H)
    rs = h0.new_empty(T, B, H)
    mean = h0.new_empty(T, H)
    invstd = h0.new_empty(T, H)
    inv_b = 1.0 / B
    unbias = B / (B - 1) if B > 1 else 1.0
    if use_sequence_kernel(B, H):
        hT = h0.new_empty(B, H)
        rm = running_mean.new_empty(H)  # written by the kernel: no copies of the inputs
        rv = running_var.new_empty(H)
        wrap_triton(_fwd_seq_kernel)[(1,)](
            ids, h0, emb, weight, bias, bn_weight, bn_bias, running_mean, running_var, out, hT, xs, rs, mean,
            invstd, rm, rv, B, T, H, V, momentum, eps, inv_b, unbias, NORM_STATE=norm_state, TRAINING=training,
            SKIP_FIRST_LINEAR=skip_first_linear, BLOCK_B=_pow2(B), BLOCK_H=_pow2(H), num_warps=NUM_WARPS)
        return out, hT, rm, rv, xs, rs, mean, invstd
    rm = running_mean.clone()  # the per-step kernels update these step by step
    rv = running_var.clone()
    BLOCK_N = 32 if H <= 256 else 64
    BLOCK_B = min(_pow2(B), STEP_BLOCK_B)
    grid = (triton.cdiv(H, BLOCK_N),)
    for t in range(T):
        if t == 0:
            h_prev, h_stride = h0, H
        elif norm_state:
            h_prev, h_stride = out[:, t - 1], T * H
        else:
            h_prev, h_stride = rs[t - 1], H
        wrap_triton(_fwd_step_kernel)[grid](
            ids, h_prev, h_stride, emb, weight, bias, bn_weight, bn_bias, rm, rv,
            out[:, t], xs[t], rs[t], mean[t], invstd[t],
            t, B, T, H, V, momentum, eps, inv_b, unbias,
            TRAINING=training, LINEAR=not (t == 0 and skip_first_linear), BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N,
            BLOCK_K=32, num_warps=NUM_WARPS)
    hT = (out[:, T - 1] if norm_state else rs[T - 1]).clone()
    return out, hT, rm, rv, xs, rs, mean, invstd


# -----------------------------------------------------------------------------------------------
# Backward
# -----------------------------------------------------------------------------------------------

@triton.jit
def _bn_relu_grad(g, gh_direct, r, mean, invstd, gamma, sg, sgx, inv_b, m2, TRAINING: tl.constexpr):
    """dz from the gradient g reaching out_t (and gh_direct reaching r_t), per hnrnn/zoo_cell.h."""
    if TRAINING:
        xhat = (r - mean[None, :]) * invstd[None, :]
        gr = (gamma * invstd)[None, :] * (g - (sg * inv_b)[None, :] - xhat * (sgx * inv_b)[None, :])
    else:
        gr = (gamma * invstd)[None, :] * g
    gr = gr + gh_direct
    return tl.where(m2 & ~(r <= 0.0), gr, 0.0)  # torch's threshold_backward: NaN r passes gr


@triton.jit
def _bwd_seq_kernel(gout_ptr, ghT_ptr, w_ptr, g_ptr, rs_ptr, mean_ptr, invstd_ptr,
                    gz_ptr, gx_ptr, gh0_ptr, dgamma_ptr, dbeta_ptr, B, T, H, inv_b,
                    NORM_STATE: tl.constexpr, TRAINING: tl.constexpr, SKIP_FIRST_LINEAR: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rows, cols, m2 = tile(B, H, BLOCK_B, BLOCK_H)  # one program: the whole batch
    mc = cols < H
    bh = rows[:, None] * H + cols[None, :]
    w = weight_tile(w_ptr, 0, H, BLOCK_H, TRANSPOSED=False)
    gamma = tl.load(g_ptr + cols, mask=mc, other=0.0)
    dgamma = tl.zeros([BLOCK_H], dtype=tl.float32)
    dbeta = tl.zeros([BLOCK_H], dtype=tl.float32)
    gh = tl.load(ghT_ptr + bh, mask=m2, other=0.0)
    for i in range(T):
        t = T - 1 - i
        g = tl.load(gout_ptr + rows[:, None] * (T * H) + t * H + cols[None, :], mask=m2, other=0.0)
        if NORM_STATE:
            g = g + gh
            gh_direct = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
        else:
            gh_direct = gh
        r = tl.load(rs_ptr + t * B * H + bh, mask=m2, other=0.0)
        mean = tl.load(mean_ptr + t * H + cols, mask=mc, other=0.0)
        invstd = tl.load(invstd_ptr + t * H + cols, mask=mc, other=0.0)
        xhat = (r - mean[None, :]) * invstd[None, :]
        sg = tl.sum(g, 0)
        sgx = tl.sum(tl.where(m2, g * xhat, 0.0), 0)
        dgamma += sgx
        dbeta += sg
        gz = _bn_relu_grad(g, gh_direct, r, mean, invstd, gamma, sg, sgx, inv_b, m2, TRAINING)
        tl.store(gz_ptr + t * B * H + bh, gz, mask=m2)
        gh = tl.dot(gz, w, input_precision="ieee")  # dx_t = dz_t W = grad of h_{t-1}
        if SKIP_FIRST_LINEAR:
            gh = tl.where(t == 0, gz, gh)  # r_0 = ReLU(x_0): dx_0 = dz_0
        tl.store(gx_ptr + t * B * H + bh, gh, mask=m2)
    tl.store(gh0_ptr + bh, gh, mask=m2)
    tl.store(dgamma_ptr + cols, dgamma, mask=mc)
    tl.store(dbeta_ptr + cols, dbeta, mask=mc)


@triton.jit
def _bwd_step_kernel(gout_ptr, gh_ptr, rs_ptr, mean_ptr, invstd_ptr, g_ptr, gz_ptr, dgamma_ptr, dbeta_ptr,
                     B, T, H, inv_b, NORM_STATE: tl.constexpr, TRAINING: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Step t's BatchNorm + ReLU backward for the features [pid * BLOCK_N, ...): dz_t (the caller
    then does dx_t = dz_t W as a GEMM). gout_ptr points at gout[:, t]; dgamma/dbeta accumulate."""
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mc = cols < H
    mean = tl.load(mean_ptr + cols, mask=mc, other=0.0)
    invstd = tl.load(invstd_ptr + cols, mask=mc, other=0.0)
    gamma = tl.load(g_ptr + cols, mask=mc, other=0.0)
    sg = tl.zeros([BLOCK_N], dtype=tl.float32)
    sgx = tl.zeros([BLOCK_N], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):  # pass 1: column sums
        rows = b0 + tl.arange(0, BLOCK_B)
        m2 = (rows < B)[:, None] & mc[None, :]
        g = tl.load(gout_ptr + rows[:, None] * (T * H) + cols[None, :], mask=m2, other=0.0)
        if NORM_STATE:
            g += tl.load(gh_ptr + rows[:, None] * H + cols[None, :], mask=m2, other=0.0)
        r = tl.load(rs_ptr + rows[:, None] * H + cols[None, :], mask=m2, other=0.0)
        xhat = (r - mean[None, :]) * invstd[None, :]
        sg += tl.sum(g, 0)
        sgx += tl.sum(tl.where(m2, g * xhat, 0.0), 0)
    tl.store(dgamma_ptr + cols, tl.load(dgamma_ptr + cols, mask=mc, other=0.0) + sgx, mask=mc)
    tl.store(dbeta_ptr + cols, tl.load(dbeta_ptr + cols, mask=mc, other=0.0) + sg, mask=mc)
    for b0 in range(0, B, BLOCK_B):  # pass 2: dz
        rows = b0 + tl.arange(0, BLOCK_B)
        m2 = (rows < B)[:, None] & mc[None, :]
        g = tl.load(gout_ptr + rows[:, None] * (T * H) + cols[None, :], mask=m2, other=0.0)
        gh = tl.load(gh_ptr + rows[:, None] * H + cols[None, :], mask=m2, other=0.0)
        if NORM_STATE:
            g += gh
            gh = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        r = tl.load(rs_ptr + rows[:, None] * H + cols[None, :], mask=m2, other=0.0)
        gz = _bn_relu_grad(g, gh, r, mean, invstd, gamma, sg, sgx, inv_b, m2, TRAINING)
        tl.store(gz_ptr + rows[:, None] * H + cols[None, :], gz, mask=m2)


@triton.jit
def _segment_sum_kernel(src_ptr, order_ptr, offsets_ptr, dst_ptr, H, BLOCK_H: tl.constexpr):
    """dst[v] = sum of src[order[i]] for i in [offsets[v], offsets[v + 1]), in order: the
    embedding gradient without atomics, so every run gives the same bits."""
    v = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mc = cols < H
    start = tl.load(offsets_ptr + v)
    end = tl.load(offsets_ptr + v + 1)
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for i in range(start, end):
        row = tl.load(order_ptr + i)
        acc += tl.load(src_ptr + row * H + cols, mask=mc, other=0.0)
    tl.store(dst_ptr + v * H + cols, acc, mask=mc)


def zoo_cell_backward_triton(grad_out: Tensor, grad_h_T: Tensor, ids: Tensor, vocab_size: int, weight: Tensor,
                             bn_weight: Tensor, xs: Tensor, rs: Tensor, mean: Tensor, invstd: Tensor,
                             norm_state: bool, training: bool, skip_first_linear: bool = False
                             ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, H = xs.shape
    gz = xs.new_empty(T, B, H)
    gx = xs.new_empty(T, B, H)
    dgamma = xs.new_zeros(H)
    dbeta = xs.new_zeros(H)
    inv_b = 1.0 / B
    if use_sequence_kernel(B, H):
        gh0 = xs.new_empty(B, H)
        wrap_triton(_bwd_seq_kernel)[(1,)](
            grad_out, grad_h_T, weight, bn_weight, rs, mean, invstd, gz, gx, gh0, dgamma, dbeta,
            B, T, H, inv_b, NORM_STATE=norm_state, TRAINING=training, SKIP_FIRST_LINEAR=skip_first_linear,
            BLOCK_B=_pow2(B), BLOCK_H=_pow2(H), num_warps=NUM_WARPS)
    else:
        BLOCK_N = 32
        grid = (triton.cdiv(H, BLOCK_N),)
        for t in range(T - 1, -1, -1):
            gh = grad_h_T if t == T - 1 else gx[t + 1]
            wrap_triton(_bwd_step_kernel)[grid](
                grad_out[:, t], gh, rs[t], mean[t], invstd[t], bn_weight, gz[t], dgamma, dbeta,
                B, T, H, inv_b, NORM_STATE=norm_state, TRAINING=training,
                BLOCK_B=min(_pow2(B), STEP_BLOCK_B), BLOCK_N=BLOCK_N, num_warps=NUM_WARPS)
            if t == 0 and skip_first_linear:
                gx[0].copy_(gz[0])
            else:
                torch.mm(gz[t], weight, out=gx[t])
        gh0 = gx[0].clone()
    # After the loop: the large reductions over all T*B rows (from step 1 on with skip_first_linear).
    first = 1 if skip_first_linear else 0
    grad_w = torch.mm(gz[first:].reshape(-1, H).t(), xs[first:].reshape(-1, H))
    grad_b = gz[first:].sum((0, 1))
    flat = ids.t().reshape(-1)  # time-major, like gx's rows
    sorted_ids, order = torch.sort(flat, stable=True)
    offsets = torch.searchsorted(sorted_ids, torch.arange(vocab_size + 1, device=ids.device, dtype=ids.dtype))
    grad_emb = xs.new_empty(vocab_size, H)
    BLOCK_H = min(_pow2(H), 128)
    wrap_triton(_segment_sum_kernel)[(vocab_size, triton.cdiv(H, BLOCK_H))](
        gx, order, offsets, grad_emb, H, BLOCK_H=BLOCK_H, num_warps=4)
    return gh0, grad_emb, grad_w, grad_b, dgamma, dbeta
