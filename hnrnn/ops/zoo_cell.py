"""The zoo cell (the lesson's recurrent step, Model0..Model3) as PyTorch ops.

    x_t   = h_{t-1} + E[ids_t]
    r_t   = ReLU(x_t W^T + b)
    out_t = BatchNorm1d(r_t)          (over the batch, once per step, as nn.BatchNorm1d)
    h_t   = out_t if norm_state else r_t

skip_first_linear (zoo_cell_sequence only): step 0 has no linear layer, r_0 = ReLU(h0 + E[ids_0]),
the first of the lesson's Model0's three steps (`bn(relu(i_h(x[:, 0])))`, with h0 = 0), so Model0
runs as one op.

Entry points: :func:`zoo_cell_sequence` (the time loop inside one op) and :func:`zoo_cell_step`.
Both are functional like :mod:`hnrnn.reference`: updated running statistics come back as new
tensors (in eval the inputs come back unchanged).

Ops (torch.ops.hnrnn.*), each with a fake kernel:
  zoo_cell_forward / zoo_cell_backward                 hnrnn._C (CPU and CUDA kernels; autograd in
                                                       C++, csrc/autograd.cpp)
  zoo_cell_step                                        hnrnn._C, composite of zoo_cell_forward (T = 1)
  zoo_cell_forward_triton / zoo_cell_backward_triton   triton_op (kernels/zoo_cell.py; autograd
                                                       registered here)
The forward ops also return what backward needs (pre-linear inputs xs, ReLU outputs rs, per-step
batch mean and invstd); the entry points drop those.

Input handling: non-contiguous inputs are made contiguous (a copy; gradients still flow), int32
ids are widened to int64, an empty batch returns empty outputs and keeps the running statistics
(as nn.BatchNorm1d). Everything else that is wrong raises before any kernel runs: a TypeError for
float dtypes, a ValueError for shapes (and for training with batch size 1, as nn.BatchNorm1d), a
RuntimeError for devices and for ids that are not integers, an IndexError for ids outside [0, V)
(those two as nn.Embedding). The ids range
is checked with one reduction; under torch.compile it cannot be (no host sync in a graph): the
CPU kernel still checks every id while gathering, the CUDA and Triton kernels read an
out-of-range id as a NaN embedding row instead of touching memory out of bounds.

Under torch.autocast the float inputs are cast to float32 (no zoo-cell kernel has a 16-bit
variant; _backend.autocast_cast is the policy shared with the GRU / RNN ops).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from hnrnn import reference
from hnrnn.ops import _backend

__all__ = ["zoo_cell_sequence", "zoo_cell_step"]

_FLOAT_NAMES = ("h0", "emb", "weight", "bias", "bn_weight", "bn_bias", "running_mean", "running_var")


# ---------------------------------------------------------------------------------------------
# Registration: fake kernels and autograd
# ---------------------------------------------------------------------------------------------

def _forward_fake(ids, h0, emb, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                  norm_state, training, momentum, eps, skip_first_linear=False):
    B, T = ids.shape
    H = h0.shape[1]
    return (h0.new_empty(B, T, H), h0.new_empty(B, H), running_mean.new_empty(H),
            running_var.new_empty(H), h0.new_empty(T, B, H), h0.new_empty(T, B, H),
            h0.new_empty(T, H), h0.new_empty(T, H))


def _backward_fake(grad_out, grad_h_T, ids, vocab_size, weight, bn_weight, xs, rs, mean, invstd,
                   norm_state, training, skip_first_linear=False):
    B = ids.shape[0]
    H = weight.shape[0]
    return (weight.new_empty(B, H), weight.new_empty(vocab_size, H), weight.new_empty(H, H),
            weight.new_empty(H), weight.new_empty(H), weight.new_empty(H))


def _setup_context(ctx, inputs, output):
    ids, h0, emb, weight, bias, bn_weight, bn_bias, rm, rv, norm_state, training, momentum, eps, skip = inputs
    out, h_T, new_rm, new_rv, xs, rs, mean, invstd = output
    ctx.save_for_backward(ids, weight, bn_weight, xs, rs, mean, invstd)
    ctx.vocab_size = emb.shape[0]
    ctx.norm_state = norm_state
    ctx.training = training
    ctx.skip_first_linear = skip
    ctx.mark_non_differentiable(new_rm, new_rv, xs, rs, mean, invstd)


def _triton_backward(ctx, grad_out, grad_h_T, *_unused):
    ids, weight, bn_weight, xs, rs, mean, invstd = ctx.saved_tensors
    T, B, H = xs.shape
    grad_out = xs.new_zeros(B, T, H) if grad_out is None else grad_out.contiguous()
    grad_h_T = xs.new_zeros(B, H) if grad_h_T is None else grad_h_T.contiguous()
    gh0, gemb, gw, gb, ggamma, gbeta = torch.ops.hnrnn.zoo_cell_backward_triton(
        grad_out, grad_h_T, ids, ctx.vocab_size, weight, bn_weight, xs, rs, mean, invstd,
        ctx.norm_state, ctx.training, ctx.skip_first_linear)
    return None, gh0, gemb, gw, gb, ggamma, gbeta, None, None, None, None, None, None, None


if _backend.extension() is not None:  # loading hnrnn._C defines the compiled ops
    torch.library.register_fake("hnrnn::zoo_cell_forward")(_forward_fake)
    torch.library.register_fake("hnrnn::zoo_cell_backward")(_backward_fake)

_triton_registered = False


def _triton_forward_op():
    """The Triton forward op, registering the Triton ops (and importing triton) on first use."""
    global _triton_registered
    if not _triton_registered:
        from hnrnn.kernels import zoo_cell as kernels
        from hnrnn.kernels._common import triton_op
        triton_op("hnrnn::zoo_cell_forward_triton", _forward_fake)(kernels.zoo_cell_forward_triton)
        triton_op("hnrnn::zoo_cell_backward_triton", _backward_fake)(kernels.zoo_cell_backward_triton)
        torch.library.register_autograd("hnrnn::zoo_cell_forward_triton", _triton_backward,
                                        setup_context=_setup_context)
        _triton_registered = True
    return torch.ops.hnrnn.zoo_cell_forward_triton


if _backend.triton_may_run():  # register at import, outside any torch.compile trace
    _triton_forward_op()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _validate(ids, floats, training, momentum, eps, seq):
    """Checks every input; returns (ids as contiguous int64, the float tensors contiguous)."""
    names = ("ids",) + _FLOAT_NAMES
    for name, t in zip(names, (ids,) + floats):
        if not isinstance(t, Tensor):
            raise TypeError(f"zoo_cell: {name} must be a torch.Tensor, got {type(t).__name__}")
    h0, emb, weight, bias, bn_weight, bn_bias, rm, rv = floats
    state = "h0" if seq else "h"
    if ids.dtype not in (torch.int64, torch.int32):  # a RuntimeError, as nn.Embedding's
        raise RuntimeError(f"zoo_cell: ids must be int64 or int32 token ids, got {ids.dtype}")
    if seq and (ids.dim() != 2 or ids.shape[1] < 1):
        raise ValueError(f"zoo_cell_sequence: ids must be (B, T) with T >= 1, got shape {tuple(ids.shape)}")
    if not seq and ids.dim() != 1:
        raise ValueError(f"zoo_cell_step: ids must be (B,), got shape {tuple(ids.shape)}")
    if h0.dim() != 2 or h0.shape[0] != ids.shape[0]:
        raise ValueError(f"zoo_cell: {state} must be (B, H) with B = {ids.shape[0]} (the batch of ids), "
                         f"got shape {tuple(h0.shape)}")
    H = h0.shape[1]
    if emb.dim() != 2 or emb.shape[1] != H:
        raise ValueError(f"zoo_cell: emb must be (V, H) with H = {H}, got shape {tuple(emb.shape)}")
    if weight.shape != (H, H):
        raise ValueError(f"zoo_cell: weight must be (H, H) = ({H}, {H}), got shape {tuple(weight.shape)}")
    for name, t in zip(_FLOAT_NAMES[3:], (bias, bn_weight, bn_bias, rm, rv)):
        if t.shape != (H,):
            raise ValueError(f"zoo_cell: {name} must be (H,) = ({H},), got shape {tuple(t.shape)}")
    if not h0.dtype.is_floating_point:
        raise TypeError(f"zoo_cell: {state} must be a floating point tensor, got {h0.dtype}")
    for name, t in zip(_FLOAT_NAMES[1:], floats[1:]):
        if t.dtype != h0.dtype:
            raise TypeError(f"zoo_cell: {name} has dtype {t.dtype} but {state} has {h0.dtype}; "
                            "all float inputs must share one dtype")
    for name, t in zip(names, (ids,) + floats):
        if t.device != h0.device:
            raise RuntimeError(f"zoo_cell: expected all tensors on one device, but {name} is on "
                               f"{t.device} and {state} on {h0.device}")
    if training and ids.shape[0] == 1:
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{torch.Size([ids.shape[0], H])}")
    if momentum is None or not isinstance(momentum, (int, float)):
        raise TypeError(f"zoo_cell: momentum must be a float (momentum=None, the cumulative average, "
                        f"is not supported), got {momentum!r}")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"zoo_cell: eps must be a non-negative float, got {eps!r}")
    if ids.dtype != torch.int64:
        ids = ids.long()
    return ids.contiguous(), tuple(t.contiguous() for t in floats)


def _check_ids_range(ids, vocab_size):
    """One reduction and one wait for the device on CUDA; impossible inside a compiled graph, so
    skipped there."""
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return
    lo, hi = _backend.value_range(ids)
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise IndexError(f"zoo_cell: ids must be in [0, {vocab_size}) (the rows of emb), found {bad}")


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------

# The dtypes each backend's kernels compute in (the automatic choice uses the reference for others).
_KERNEL_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32, torch.float64),
                  "triton": (torch.float32,)}


def _run(ids, floats, norm_state, training, momentum, eps, backend, seq, skip_first_linear=False):
    if isinstance(floats[0], Tensor):
        # Under torch.autocast: float32 on every backend, as no zoo-cell kernel has a 16-bit
        # variant (and the inputs must share one dtype: think of a bfloat16 carried state).
        floats = _backend.autocast_cast(floats, floats[0].device, kernel_dtypes=())
    ids, floats = _validate(ids, floats, training, momentum, eps, seq)
    h0, emb = floats[0], floats[1]
    be = _backend.resolve(backend, h0.device, h0.dtype, _KERNEL_DTYPES)
    if be != "cpu":  # the CPU kernel checks every id itself while gathering
        _check_ids_range(ids, emb.shape[0])
    if ids.shape[0] == 0:  # an empty batch: nothing to compute, statistics kept (as nn.BatchNorm1d)
        be = "reference"
    if be == "reference":
        with _backend.without_autocast(h0.device):
            if seq:
                return reference.zoo_cell_sequence(ids, *floats, norm_state, training, momentum, eps,
                                                   skip_first_linear=skip_first_linear)
            return reference.zoo_cell_step(ids, *floats, norm_state, training, momentum, eps)
    if not seq:
        ids = ids.unsqueeze(1)
    op = _triton_forward_op() if be == "triton" else torch.ops.hnrnn.zoo_cell_forward.default
    out, h_T, rm, rv = op(ids, *floats, bool(norm_state), bool(training), float(momentum), float(eps),
                          bool(skip_first_linear))[:4]
    if not training:  # eval leaves the running statistics as they were: the same tensors come back
        rm, rv = floats[6], floats[7]
    return (out if seq else out.squeeze(1)), h_T, rm, rv


def zoo_cell_sequence(ids: Tensor, h0: Tensor, emb: Tensor, weight: Tensor, bias: Tensor,
                      bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
                      norm_state: bool, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                      backend: Optional[str] = None, skip_first_linear: bool = False
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """All steps at once. ids (B, T) int64/int32; h0 (B, H); emb (V, H); weight (H, H); bias, bn_weight,
    bn_bias, running_mean, running_var (H,). Returns (out (B, T, H), h_T (B, H), running_mean, running_var).

    ``backend``: "cuda", "triton", "cpu", "reference", or None/"auto" (``$HNRNN_BACKEND``, else the
    fastest for the tensors' device). ``skip_first_linear``: step 0 without the linear layer,
    r_0 = ReLU(h0 + E[ids_0]) (Model0's first step); weight and bias get no gradient from that step
    (zeros when it is the only one)."""
    floats = (h0, emb, weight, bias, bn_weight, bn_bias, running_mean, running_var)
    return _run(ids, floats, norm_state, training, momentum, eps, backend, seq=True,
                skip_first_linear=skip_first_linear)


def zoo_cell_step(ids: Tensor, h: Tensor, emb: Tensor, weight: Tensor, bias: Tensor,
                  bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
                  norm_state: bool, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                  backend: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step. ids (B,); h (B, H). Returns (out (B, H), h_new (B, H), running_mean, running_var)."""
    floats = (h, emb, weight, bias, bn_weight, bn_bias, running_mean, running_var)
    return _run(ids, floats, norm_state, training, momentum, eps, backend, seq=False)
