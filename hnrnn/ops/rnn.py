"""GRU / vanilla-RNN op family.

Design (haste-style): the input projection of every time step is one GEMM done here in
ATen (`gates_x = x W_ih^T + b_ih`); the recurrence of one layer and one direction is one
fused op:

  hnrnn::gru_recurrence(gates_x, h0, w_hh, b_hh?, reverse, lengths?, save) -> (out, h_n, ws)
  hnrnn::rnn_recurrence(gates_x, h0, w_hh, b_hh?, relu, reverse, lengths?, save) -> (out, h_n, ws)

with backward ops that keep only `dh_prev = dh * z + dG_h W_hh` sequential and return the
per-step gate gradients; `dW_hh`, `db_hh` (here) and `dW_ih`, `db_ih`, `dx` (autograd of
the projection GEMM) are then big GEMMs / reductions over all steps at once. Deterministic.

Backends: `cpu` / `cuda` are the compiled ops above (hnrnn._C, one schema, per-device
kernels, autograd in C++: csrc/autograd.cpp); `triton` are the same ops as `hnrnn::*_triton`
(torch.library.triton_op, kernels in hnrnn.kernels, autograd registered here);
`reference` is hnrnn.reference.{gru,rnn}_recurrence under plain autograd.

Whole networks (stacked layers, both directions; what hnrnn.nn runs): on the compiled
backends one op, `hnrnn::rnn_network` (csrc/rnn_network.cpp), does every layer, its
projection GEMM and the dropout between layers in C++, with one C++ backward; the other
backends run the same steps here in Python (:func:`recurrent_network`).

Workspace `ws` (what backward needs, produced by every compiled/Triton backend alike):
  GRU (T, B, 5H) = [r, z, n, W_hn h_prev + b_hn, h_prev];   RNN (T, B, H) = [h].
The RNN's h_prev for dW_hh is the state of the step before, or h0 (:func:`_rnn_previous_states`).
A forward that no backward follows (grad mode off, or no input requiring grad) passes
save=False: the kernels write no workspace and return an empty one, (0,) (rnn_network: an
empty `saved`), so inference neither stores nor allocates it (:func:`_save_for`).
`lengths` (int64 (B,), optional) masks packed sequences: step t of sequence b runs iff
t < lengths[b]; masked steps output 0 and carry the state (see hnrnn.reference).
"""
import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hnrnn import reference
from hnrnn.ops import _backend
from hnrnn.ops._backend import extension, resolve

MODES = ("gru", "rnn_tanh", "rnn_relu")
_WS = {"gru": 5, "rnn": 1}  # workspace width in units of H


# ---------------------------------------------------------------------------
# autograd of the Triton ops (the compiled ops have theirs in C++)
# ---------------------------------------------------------------------------

def _rnn_previous_states(h: Tensor, h0: Tensor, reverse: bool, lengths: Optional[Tensor]) -> Tensor:
    """h_prev of every step of an RNN from its states and h0 (as csrc/rnn_dispatch.h): the state of
    the step before in the direction of the recurrence, h0 at a sequence's first step. Masked steps
    get finite values (their states are 0) that meet zero gate gradients."""
    if not reverse:
        return torch.cat([h0[None], h[:-1]])
    prev = torch.cat([h[1:], h0[None]])
    if lengths is None:
        return prev
    is_first = torch.arange(h.shape[0], device=h.device)[:, None] == (lengths.to(h.device) - 1)[None, :]
    return torch.where(is_first[:, :, None], h0[None], prev)


def _weight_grads(ctx, dgh: Tensor, ws: Tensor, h0: Optional[Tensor], lengths: Optional[Tensor], gates: int):
    """dW_hh = sum_t dG_h[t]^T h_prev[t] and db_hh = sum_t dG_h[t]: one GEMM, one reduction.
    h0: the RNN's (its h_prev at each sequence's first step); None for the GRU (ws holds h_prev)."""
    needs = getattr(ctx, "needs_input_grad", (True,) * 4)
    H = dgh.shape[2] // gates
    rows = dgh.shape[0] * dgh.shape[1]  # T*B, spelled out: -1 is ambiguous when H = 0
    dgh2 = dgh.reshape(rows, gates * H)
    dw = None
    if needs[2]:
        h_prev = ws[..., 4 * H:] if gates == 3 else _rnn_previous_states(ws, h0, ctx.reverse, lengths)
        dw = dgh2.t() @ h_prev.reshape(rows, H) if rows else dgh2.new_zeros(gates * H, H)
    db = dgh2.sum(0) if ctx.has_bias and needs[3] else None
    return dw, db


def _grads_or_zeros(grad_out: Optional[Tensor], grad_h_n: Optional[Tensor], ws: Tensor, H: int):
    T, B = ws.shape[0], ws.shape[1]
    if grad_out is None:
        grad_out = ws.new_zeros((T, B, H))
    if grad_h_n is None:
        grad_h_n = ws.new_zeros((B, H))
    return grad_out.contiguous(), grad_h_n.contiguous()


def _check_saved(op: str, save: bool):
    """setup_context runs when autograd records the call: its backward needs the workspace."""
    if not save:
        raise ValueError(f"{op}: save=False, but autograd records this call (grad mode is on and an input "
                         "requires grad), and its backward needs what is saved; pass save=True or run under "
                         "torch.no_grad()")


def _gru_setup_context(ctx, inputs, output):
    _gates_x, _h0, w_hh, b_hh, reverse, lengths, save = inputs
    _check_saved("gru_recurrence_triton", save)
    ws = output[2]
    ctx.save_for_backward(ws, w_hh, lengths)
    ctx.reverse = reverse
    ctx.has_bias = b_hh is not None
    ctx.mark_non_differentiable(ws)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the (T, B, 5H) workspace


def _rnn_setup_context(ctx, inputs, output):
    _gates_x, h0, w_hh, b_hh, relu, reverse, lengths, save = inputs
    _check_saved("rnn_recurrence_triton", save)
    ws = output[2]
    ctx.save_for_backward(ws, w_hh, lengths, h0)
    ctx.relu = relu
    ctx.reverse = reverse
    ctx.has_bias = b_hh is not None
    ctx.mark_non_differentiable(ws)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the (T, B, H) workspace


def _gru_backward_with(bwd_op):
    def backward(ctx, grad_out, grad_h_n, _grad_ws):
        ws, w_hh, lengths = ctx.saved_tensors
        grad_out, grad_h_n = _grads_or_zeros(grad_out, grad_h_n, ws, w_hh.shape[1])
        dgx, dgh, dh0 = bwd_op(grad_out, grad_h_n, ws, w_hh, ctx.reverse, lengths)
        dw, db = _weight_grads(ctx, dgh, ws, None, lengths, 3)
        return dgx, dh0, dw, db, None, None, None
    return backward


def _rnn_backward_with(bwd_op):
    def backward(ctx, grad_out, grad_h_n, _grad_ws):
        ws, w_hh, lengths, h0 = ctx.saved_tensors
        grad_out, grad_h_n = _grads_or_zeros(grad_out, grad_h_n, ws, w_hh.shape[1])
        dg, dh0 = bwd_op(grad_out, grad_h_n, ws, w_hh, ctx.relu, ctx.reverse, lengths)
        dw, db = _weight_grads(ctx, dg, ws, h0, lengths, 1)
        return dg, dh0, dw, db, None, None, None, None
    return backward


# Fake kernels, shared by the compiled ops and (under the Triton interpreter) the Triton ops.

def _workspace_shape(kind: str, T, B, H, save: bool):
    """(T, B, width * H) when saved, else (0,) (rnn_dispatch.h's workspace_shape)."""
    return (T, B, _WS[kind] * H) if save else (0,)


def _fake_forward(gates_x: Tensor, h0: Tensor, kind: str, save: bool):
    T, B, H = gates_x.shape[0], gates_x.shape[1], h0.shape[1]
    return (gates_x.new_empty((T, B, H)), h0.new_empty((B, H)),
            gates_x.new_empty(_workspace_shape(kind, T, B, H, save)))


def _gru_fake(gates_x, h0, w_hh, b_hh, reverse, lengths, save=True):
    return _fake_forward(gates_x, h0, "gru", save)


def _gru_backward_fake(grad_out, grad_h_n, ws, w_hh, reverse, lengths):
    T, B, H = grad_out.shape
    return grad_out.new_empty((T, B, 3 * H)), grad_out.new_empty((T, B, 3 * H)), grad_h_n.new_empty((B, H))


def _rnn_fake(gates_x, h0, w_hh, b_hh, relu, reverse, lengths, save=True):
    return _fake_forward(gates_x, h0, "rnn", save)


def _rnn_backward_fake(grad_out, grad_h_n, ws, w_hh, relu, reverse, lengths):
    return grad_out.new_empty(grad_out.shape), grad_h_n.new_empty(grad_h_n.shape)


# ---------------------------------------------------------------------------
# compiled ops (hnrnn._C): fake kernels (their autograd is C++)
# ---------------------------------------------------------------------------

def _register_compiled():
    if extension() is None or not hasattr(torch.ops.hnrnn, "gru_recurrence"):
        return False

    for name, fake in (("gru_recurrence", _gru_fake), ("gru_recurrence_backward", _gru_backward_fake),
                       ("rnn_recurrence", _rnn_fake), ("rnn_recurrence_backward", _rnn_backward_fake)):
        torch.library.register_fake(f"hnrnn::{name}")(fake)

    @torch.library.register_fake("hnrnn::rnn_network")
    def _(input, hx, weights, mode, num_layers, bidirectional, dropout, train, lengths, save=True):
        T, B, H = input.shape[0], input.shape[1], hx.shape[2]
        dirs = 2 if bidirectional else 1
        if not save:
            return input.new_empty((T, B, dirs * H)), hx.new_empty(hx.shape), []
        width = _WS["gru" if mode == 0 else "rnn"] * H
        ws = [input.new_empty((T, B, width)) for _ in range(num_layers * dirs)]
        layer_inputs = [input.new_empty((T, B, dirs * H)) for _ in range(num_layers - 1)]
        noise = [input.new_empty((T, B, dirs * H) if train and dropout > 0 else (0,)) for _ in range(num_layers - 1)]
        return input.new_empty((T, B, dirs * H)), hx.new_empty(hx.shape), ws + layer_inputs + noise

    @torch.library.register_fake("hnrnn::rnn_network_backward")
    def _(grad_output, grad_h_n, input, hx, weights, saved, mode, num_layers, bidirectional, lengths, input_grad):
        return input.new_empty(input.shape), grad_h_n.new_empty(grad_h_n.shape), [w.new_empty(w.shape) for w in weights]

    return True


_COMPILED = _register_compiled()


# ---------------------------------------------------------------------------
# Triton ops (registered on first use: importing triton is not free)
# ---------------------------------------------------------------------------

_TRITON_OPS = None


def triton_ops():
    """The Triton ops, registered once: (gru_fwd, gru_bwd, rnn_fwd, rnn_bwd). A plain global
    rather than functools.lru_cache: torch.compile would trace through the cache wrapper and
    re-run the registration."""
    global _TRITON_OPS
    if _TRITON_OPS is None:
        _TRITON_OPS = _register_triton()
    return _TRITON_OPS


def _register_triton():
    from hnrnn.kernels import gru as kgru
    from hnrnn.kernels import rnn as krnn
    from hnrnn.kernels._common import triton_op

    @triton_op("hnrnn::gru_recurrence_triton", _gru_fake)
    def gru_fwd(gates_x: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], reverse: bool,
                lengths: Optional[Tensor], save: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        return kgru.gru_forward(gates_x, h0, w_hh, b_hh, reverse, lengths, save)

    @triton_op("hnrnn::gru_recurrence_backward_triton", _gru_backward_fake)
    def gru_bwd(grad_out: Tensor, grad_h_n: Tensor, ws: Tensor, w_hh: Tensor, reverse: bool,
                lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        return kgru.gru_backward(grad_out, grad_h_n, ws, w_hh, reverse, lengths)

    @triton_op("hnrnn::rnn_recurrence_triton", _rnn_fake)
    def rnn_fwd(gates_x: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], relu: bool,
                reverse: bool, lengths: Optional[Tensor], save: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        return krnn.rnn_forward(gates_x, h0, w_hh, b_hh, relu, reverse, lengths, save)

    @triton_op("hnrnn::rnn_recurrence_backward_triton", _rnn_backward_fake)
    def rnn_bwd(grad_out: Tensor, grad_h_n: Tensor, ws: Tensor, w_hh: Tensor, relu: bool,
                reverse: bool, lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        return krnn.rnn_backward(grad_out, grad_h_n, ws, w_hh, relu, reverse, lengths)

    gru_fwd.register_autograd(_gru_backward_with(gru_bwd), setup_context=_gru_setup_context)
    rnn_fwd.register_autograd(_rnn_backward_with(rnn_bwd), setup_context=_rnn_setup_context)
    return gru_fwd, gru_bwd, rnn_fwd, rnn_bwd


if _backend.triton_may_run():  # register at import, outside any torch.compile trace
    triton_ops()


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# The dtypes each backend's kernels compute in (the 16-bit ones accumulate in fp32); the
# reference takes any dtype (and float32 under autocast, the arithmetic the kernels accumulate in).
_KERNEL_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": _FLOATS, "triton": _FLOATS}


def _backend_and_inputs(backend: Optional[str], tensors: Sequence[Optional[Tensor]]):
    """The backend to run and its inputs (the first one decides device and dtype). Under
    torch.autocast they are cast by the shared policy (_backend.autocast_cast: the autocast
    dtype where the backend's kernel has one, else float32). Otherwise the automatic choice
    passes over backends without a kernel for the dtype (e.g. bfloat16 on CPU goes to the
    reference) and an explicit one without it is a TypeError (_backend.resolve)."""
    first = tensors[0]
    if _backend.autocast_enabled(first.device):
        b = resolve(backend, first.device)
        return b, _backend.autocast_cast(tensors, first.device, _KERNEL_DTYPES.get(b, ()))
    return resolve(backend, first.device, first.dtype, _KERNEL_DTYPES), tuple(tensors)


def _check_args(op: str, gates_x: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
                lengths: Optional[Tensor], gates: int) -> Optional[Tensor]:
    """Checks a recurrence's inputs before any backend runs, so that every backend refuses
    alike and the message names the input: TypeError for types and dtypes, ValueError for
    shapes and lengths outside [0, T], RuntimeError for devices. Returns lengths as int64 on
    the inputs' device."""
    named = [("gates_x", gates_x), ("h0", h0), ("w_hh", w_hh), ("b_hh", b_hh), ("lengths", lengths)]
    for name, t in named:
        if not isinstance(t, Tensor) and not (t is None and name in ("b_hh", "lengths")):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    named = [(n, t) for n, t in named[:4] if t is not None]
    if not gates_x.dtype.is_floating_point:
        raise TypeError(f"{op}: gates_x must be a floating point tensor, got {gates_x.dtype}")
    for name, t in named[1:]:
        # (under autocast the caller's casts decide; the kernels still check)
        if t.dtype != gates_x.dtype and not torch._C._is_any_autocast_enabled():
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but gates_x has {gates_x.dtype}")
        if t.device != gates_x.device:
            raise RuntimeError(f"{op}: expected all tensors on one device, but {name} is on {t.device} "
                               f"and gates_x on {gates_x.device}")
    if gates_x.dim() != 3 or h0.dim() != 2 or h0.shape[0] != gates_x.shape[1]:
        raise ValueError(f"{op}: gates_x must be (T, B, {gates}*H) and h0 (B, H) with the same B, got "
                         f"{tuple(gates_x.shape)} and {tuple(h0.shape)}")
    GH = gates * h0.shape[1]
    if gates_x.shape[2] != GH or w_hh.shape != (GH, h0.shape[1]) or (b_hh is not None and b_hh.shape != (GH,)):
        raise ValueError(f"{op}: with H = {h0.shape[1]} (from h0), gates_x must be (T, B, {GH}), w_hh ({GH}, "
                         f"{h0.shape[1]}) and b_hh ({GH},), got {tuple(gates_x.shape)}, {tuple(w_hh.shape)} and "
                         f"{None if b_hh is None else tuple(b_hh.shape)}")
    if lengths is None:
        return None
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"{op}: lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.shape != (gates_x.shape[1],):
        raise ValueError(f"{op}: lengths must be (B,) = ({gates_x.shape[1]},), got {tuple(lengths.shape)}")
    # One reduction (free for the CPU lengths of a packed sequence); not possible in a compiled graph.
    if not torch.compiler.is_compiling() and lengths.numel() > 0:
        lo, hi = _backend.value_range(lengths)
        if lo < 0 or hi > gates_x.shape[0]:
            raise ValueError(f"{op}: lengths must be in [0, T] = [0, {gates_x.shape[0]}], found "
                             f"{lo if lo < 0 else hi}")
    return _lengths_on(lengths, gates_x.device)


def _lengths_on(lengths: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    return None if lengths is None else lengths.to(device=device, dtype=torch.int64)


def _save_for(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Whether autograd records an op on `tensors` (grad mode on, one requires grad): only then
    do the kernels save what backward needs."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def gru_recurrence(gates_x: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor] = None,
                   reverse: bool = False, lengths: Optional[Tensor] = None,
                   backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """GRU recurrence of one layer and direction. gates_x: (T, B, 3H) = x W_ih^T + b_ih;
    h0: (B, H); w_hh: (3H, H). Returns (out (T, B, H), h_n (B, H))."""
    lengths = _check_args("gru_recurrence", gates_x, h0, w_hh, b_hh, lengths, 3)
    b, (gates_x, h0, w_hh, b_hh) = _backend_and_inputs(backend, (gates_x, h0, w_hh, b_hh))
    if b == "reference":
        with _backend.without_autocast(gates_x.device):
            return reference.gru_recurrence(gates_x, h0, w_hh, b_hh, reverse, lengths)
    save = _save_for((gates_x, h0, w_hh, b_hh))
    if b == "triton":
        triton_ops()
        out, h_n, _ = torch.ops.hnrnn.gru_recurrence_triton(gates_x, h0, w_hh, b_hh, reverse, lengths, save)
    else:
        out, h_n, _ = torch.ops.hnrnn.gru_recurrence(gates_x, h0, w_hh, b_hh, reverse, lengths, save)
    return out, h_n


def rnn_recurrence(gates_x: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor] = None,
                   nonlinearity: str = "tanh", reverse: bool = False, lengths: Optional[Tensor] = None,
                   backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Vanilla-RNN recurrence of one layer and direction. gates_x: (T, B, H); w_hh: (H, H)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    lengths = _check_args("rnn_recurrence", gates_x, h0, w_hh, b_hh, lengths, 1)
    b, (gates_x, h0, w_hh, b_hh) = _backend_and_inputs(backend, (gates_x, h0, w_hh, b_hh))
    relu = nonlinearity == "relu"
    if b == "reference":
        with _backend.without_autocast(gates_x.device):
            return reference.rnn_recurrence(gates_x, h0, w_hh, b_hh, nonlinearity, reverse, lengths)
    save = _save_for((gates_x, h0, w_hh, b_hh))
    if b == "triton":
        triton_ops()
        out, h_n, _ = torch.ops.hnrnn.rnn_recurrence_triton(gates_x, h0, w_hh, b_hh, relu, reverse, lengths, save)
    else:
        out, h_n, _ = torch.ops.hnrnn.rnn_recurrence(gates_x, h0, w_hh, b_hh, relu, reverse, lengths, save)
    return out, h_n


def recurrent_network(input: Tensor, hx: Tensor, weights: Sequence[Sequence[Optional[Tensor]]], mode: str,
                      num_layers: int, bidirectional: bool = False, dropout: float = 0.0,
                      training: bool = False, lengths: Optional[Tensor] = None,
                      backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Stacked, optionally bidirectional GRU / RNN, time-major: input (T, B, I);
    hx (num_layers * num_directions, B, H); weights[layer * num_directions + direction] =
    [w_ih, w_hh, b_ih, b_hh] (biases may be None). Dropout between layers as ATen's CPU RNNs
    draw it (the same noise on every backend and device). Returns (out (T, B, num_directions * H), h_n)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if input.shape[0] == 0:  # torch.nn's error, word for word
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    lengths = _lengths_on(lengths, input.device)
    flat = [t for w in weights for t in w if t is not None]
    b, (x, h, *flat) = _backend_and_inputs(backend, (input, hx, *flat))
    device = input.device.type
    autocast = _backend.autocast_enabled(input.device)
    # The whole network in one op (csrc/rnn_network.cpp), in the dtype the policy above cast to.
    # Under an autocast dtype the kernels lack (bfloat16 on the CPU) the layers run one by one
    # below instead, so the projection GEMMs still run in low precision, as autocast would.
    if b in ("cpu", "cuda") and (not autocast or torch.get_autocast_dtype(device) in _KERNEL_DTYPES[b]):
        with _backend.without_autocast(input.device) if autocast else contextlib.nullcontext():
            out, h_n, _ = torch.ops.hnrnn.rnn_network(x, h, flat, MODES.index(mode), num_layers, bidirectional,
                                                      float(dropout), bool(training), lengths,
                                                      _save_for((x, h, *flat)))
        return out, h_n
    dirs = 2 if bidirectional else 1
    layer_input = input
    h_n: List[Tensor] = []
    for layer in range(num_layers):
        outs: List[Tensor] = []
        for d in range(dirs):
            k = layer * dirs + d
            w_ih, w_hh, b_ih, b_hh = weights[k]
            gates_x = F.linear(layer_input, w_ih, b_ih)  # every step at once: one GEMM
            if mode == "gru":
                out, h = gru_recurrence(gates_x, hx[k], w_hh, b_hh, d == 1, lengths, b)
            else:
                out, h = rnn_recurrence(gates_x, hx[k], w_hh, b_hh, mode[4:], d == 1, lengths, b)
            outs.append(out)
            h_n.append(h)
        layer_input = torch.cat(outs, -1) if dirs == 2 else outs[0]
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = _dropout_between_layers(layer_input, dropout)
    return layer_input, torch.stack(h_n, 0)


def _dropout_between_layers(x: Tensor, p: float) -> Tensor:
    """ATen's CPU dropout (Dropout.cpp), which torch.nn's RNNs apply between layers on the CPU:
    bernoulli noise scaled by 1 / (1 - p). rnn_network draws it the same way on every device."""
    noise = torch.zeros_like(x) if p >= 1 else torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)
    return x * noise
