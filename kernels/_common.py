"""Small helpers shared by the Triton kernels and their launchers."""
from typing import Callable

import torch
import triton
import triton.language as tl

from hnrnn.ops._backend import triton_interpret


def triton_op(name: str, fake: Callable):
    """Decorator: ``torch.library.triton_op(name, mutates_args=())``, except under TRITON_INTERPRET=1.

    There triton.jit gives interpreted functions, which wrap_triton cannot capture: tracing the
    body (triton_op's fake kernel and its functional decomposition) would launch them on fake
    tensors. So under the interpreter the op is an opaque custom_op with the explicit ``fake``
    kernel, and torch.compile traces it as it does the compiled ops."""
    def decorate(fn):
        if not triton_interpret():
            return torch.library.triton_op(name, fn, mutates_args=())
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fake)
        return op
    return decorate


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)`` (so launches trace under torch.compile), except under
    TRITON_INTERPRET=1, where triton.jit gives interpreted functions that torch 2.11's wrap_triton
    rejects (newer torch passes them through unchanged, as here)."""
    return kernel if triton_interpret() else torch.library.wrap_triton(kernel)


# ------------------------------------------------------------------ pieces of the recurrence kernels

@triton.jit
def tile(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The batch rows and features a program owns in a (B, H) problem (grid axes 0 and 1), and
    the (BLOCK_B, BLOCK_H) mask of those inside it."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rj = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    return rb, rj, (rb < B)[:, None] & (rj < H)[None, :]


@triton.jit
def weight_tile(w_ptr, gate, H, BLOCK_H: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Gate `gate`'s (H, H) block of W_hh, zero-padded to (BLOCK_H, BLOCK_H): w[j, k] =
    W_hh[gate * H + j, k], or its transpose (so that h @ w is W h)."""
    r = tl.arange(0, BLOCK_H)
    if TRANSPOSED:
        j = r[None, :]
        k = r[:, None]
    else:
        j = r[:, None]
        k = r[None, :]
    return tl.load(w_ptr + (gate * H + j) * H + k, mask=(j < H) & (k < H), other=0.0)


@triton.jit
def bias_row(b_ptr, gate, H, rj, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """Gate `gate`'s block of b_hh at the features rj (zeros without a bias)."""
    if HAS_BIAS:
        b = tl.load(b_ptr + gate * H + rj, mask=rj < H, other=0.0).to(ACC)
    else:
        b = tl.zeros(rj.shape, dtype=ACC)
    return b


@triton.jit
def load_lengths(len_ptr, rb, B, HAS_LEN: tl.constexpr):
    """The sequence length of each row (packed sequences), zeros without lengths (unused then)."""
    if HAS_LEN:
        lens = tl.load(len_ptr + rb, mask=rb < B, other=0)
    else:
        lens = tl.zeros(rb.shape, dtype=tl.int64)
    return lens


@triton.jit
def time_index(s, T, REVERSE: tl.constexpr):
    """The time step of loop iteration s (the reverse direction runs from T - 1 down)."""
    t = s
    if REVERSE:
        t = T - 1 - s
    return t


def block_sizes(B: int, H: int):
    """(BLOCK_B, BLOCK_H) of the resident recurrence kernels: powers of two, at least 16 (the
    smallest tl.dot tile)."""
    block_h = max(16, triton.next_power_of_2(H))
    block_b = 16 if block_h >= 128 else max(16, min(32, triton.next_power_of_2(B)))
    return block_b, block_h


# The resident recurrence kernels (kernels/gru.py, rnn.py) keep W_hh on chip for the whole time
# loop; their dot operands and layout conversions are staged in shared memory, and a block gets at
# most 227 KiB of it on H100 / H200. The largest padded hidden size (BLOCK_H) that fits, per number
# of (H, H) gate blocks in W_hh and element size in bytes; larger ones run the per-step path.
# tests/test_triton_compile.py compiles each of these configurations for sm_90 and checks the
# shared memory it asks for (the backward needs the most: 1.6x the weight in fp32, 3.5x in fp64).
RESIDENT_MAX_BLOCK_H = {(3, 2): 128, (3, 4): 64, (3, 8): 32,   # GRU: 16-bit, fp32, fp64
                        (1, 2): 256, (1, 4): 128, (1, 8): 64}  # vanilla RNN
FORCE_STEP_PATH = False  # test hook: the per-step path at every size
# Warps of the resident kernels: with 4 their dots spill (the float32 GRU forward at the seed
# shape: 10 KB a thread, ptxas giving up at 32 registers), with 8 at most 660 bytes (sm_90).
RESIDENT_NUM_WARPS = 8


def resident(gates: int, H: int, dtype: torch.dtype) -> bool:
    """Whether the recurrence with `gates` (H, H) blocks of W_hh runs the resident kernels."""
    return not FORCE_STEP_PATH and block_sizes(1, H)[1] <= RESIDENT_MAX_BLOCK_H[gates, dtype.itemsize]


def step_grid(B: int, H: int):
    """(grid, BLOCK_B, BLOCK_H) of the per-step pointwise kernels: 2-D tiles of up to 1024 elements
    over (B, H), 8 per thread (larger tiles spill: a dozen live (BLOCK_B, BLOCK_H) values)."""
    block_h = min(128, triton.next_power_of_2(H))
    block_b = min(1024 // block_h, triton.next_power_of_2(B))
    return (triton.cdiv(B, block_b), triton.cdiv(H, block_h)), block_b, block_h


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the state and the recurrent products are kept in: fp64 for float64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def recurrent_product_input(h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The state as the recurrent product reads it: rounded to the inputs' dtype first, as the
    resident kernels round it for their tl.dot (so 16-bit inputs give the same products on both
    paths; the GEMM then multiplies exactly and accumulates in fp32)."""
    return h if h.dtype == dtype else h.to(dtype).to(h.dtype)


def forward_steps(step_kernel, gates_x, h0, w_hh, b_hh, reverse, lengths, out, ws, **constexprs):
    """The per-step forward of a recurrence (W_hh too large to stay on chip): per step one GEMM,
    gh = W_hh h + b_hh, in the accumulation dtype, then one fused pointwise kernel (gates, output,
    workspace where the SAVE constexpr says so, next state). Returns h_n."""
    T, B, H = out.shape
    if B * H == 0:  # nothing to compute (and no zero-size grid to launch)
        return h0.clone()
    acc = accumulation_dtype(h0.dtype)
    w = w_hh.to(acc)
    b = None if b_hh is None else b_hh.to(acc)
    h = h0.to(acc, copy=True)  # ping-pong state buffers, never the caller's h0
    h_next = torch.empty_like(h)
    grid, block_b, block_h = step_grid(B, H)
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_in = recurrent_product_input(h, h0.dtype)
        gh = torch.mm(h_in, w.t()) if b is None else torch.addmm(b, h_in, w.t())
        wrap_triton(step_kernel)[grid](
            gates_x, gh, h, lengths if lengths is not None else h, out, h_next, ws, t, B, H,
            HAS_LEN=lengths is not None, ACC=compute_dtype(h0.dtype), BLOCK_B=block_b, BLOCK_H=block_h,
            **constexprs)
        h, h_next = h_next, h
    return h.to(h0.dtype)


def backward_steps(step_kernel, grad_out, grad_h_n, ws, w_hh, reverse, lengths, outputs, **constexprs):
    """The per-step backward: per step one fused pointwise kernel (gate gradients into `outputs`,
    the last of which is dG_h, and the direct part of dh_prev), then dh_prev += dG_h W_hh as one
    GEMM. Returns dh0."""
    T, B, H = grad_out.shape
    if B * H == 0:  # nothing to compute (and no zero-size grid to launch)
        return grad_h_n.clone()
    dtype = grad_out.dtype
    acc = accumulation_dtype(dtype)
    w = w_hh.to(acc)
    dh = grad_h_n.to(acc, copy=True)
    carry = torch.empty_like(dh)
    if lengths is not None:  # active[t, b]: step t of sequence b ran
        active = (torch.arange(T, device=lengths.device)[:, None] < lengths[None, :]).unsqueeze(-1)
    dgh = outputs[-1]
    grid, block_b, block_h = step_grid(B, H)
    for s in range(T):
        t = s if reverse else T - 1 - s
        wrap_triton(step_kernel)[grid](
            grad_out, dh, ws, lengths if lengths is not None else dh, *outputs, carry, t, B, H,
            HAS_LEN=lengths is not None, ACC=compute_dtype(dtype), BLOCK_B=block_b, BLOCK_H=block_h,
            **constexprs)
        dh_prev = torch.addmm(carry, dgh[t].to(acc), w)  # dgh is stored rounded, as the resident dot reads it
        # a masked step carried the state through: dh passes unchanged (even where W_hh is not finite)
        dh = dh_prev if lengths is None else torch.where(active[t], dh_prev, dh)
    return dh.to(dtype)


def compute_dtype(dtype: torch.dtype):
    """State and gate math run in fp32 (fp64 for float64 inputs)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """IEEE products for float32 (no TF32 rounding); 16-bit inputs use the tensor-core default."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"
