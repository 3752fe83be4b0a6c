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


def block_sizes(B: int, H: int):
    """(BLOCK_B, BLOCK_H): powers of two, at least 16 (the smallest tl.dot tile)."""
    block_h = max(16, triton.next_power_of_2(H))
    block_b = 16 if block_h >= 128 else max(16, min(32, triton.next_power_of_2(B)))
    return block_b, block_h


def compute_dtype(dtype: torch.dtype):
    """State and gate math run in fp32 (fp64 for float64 inputs)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """IEEE products for float32 (no TF32 rounding); 16-bit inputs use the tensor-core default."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"
