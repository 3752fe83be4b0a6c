"""Runners shared by the fuzz and determinism tests (the random cases they run are drawn by
fuzz_strategies.py; these need no hypothesis, which the GPU machines lack).

Each runner calls one public entry point and returns a flat list of tensors: outputs, states,
running statistics and the gradient of every differentiable input of a fixed random projection
of the outputs (zeros for an input the loss does not reach).
"""
import copy

import torch
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import hnrnn.nn
from hnrnn.ops import rnn as ops
from hnrnn.zoo import MODELS
from rnn_helpers import grad_or_zeros, leaf, packed_leaf, run_with_grads


def _randn(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------------- recurrence ops


def recurrence_inputs(case, dtype):
    """(gates_x, h0, w_hh, b_hh or None), lengths, and the output / state projections."""
    r = _randn(case["seed"])
    T, B, H = case["T"], case["B"], case["H"]
    G = 3 if case["kind"] == "gru" else 1
    args = [r(T, B, G * H), r(B, H), r(G * H, H) / max(H, 1) ** 0.5, r(G * H) if case["bias"] else None]
    lengths = None if case["lengths"] is None else torch.tensor(case["lengths"], dtype=torch.int64)
    return [None if a is None else a.to(dtype) for a in args], lengths, r(T, B, H).to(dtype), r(B, H).to(dtype)


def torch_cell_recurrence(kind, gates_x, h0, w_hh, b_hh, reverse, lengths):
    """The recurrence with torch's own cells (torch.gru_cell, rnn_tanh_cell, rnn_relu_cell) given an
    identity input weight, so that their input projection is gates_x itself: a ground truth
    independent of hnrnn.reference. Step t of row b runs iff t < lengths[b]; a masked step
    outputs 0 and keeps the state."""
    cell = {"gru": torch.gru_cell, "rnn_tanh": torch.rnn_tanh_cell, "rnn_relu": torch.rnn_relu_cell}[kind]
    eye = torch.eye(gates_x.shape[2], dtype=gates_x.dtype)
    T = gates_x.shape[0]
    h, outs = h0, [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_new = cell(gates_x[t], h, eye, w_hh, None, b_hh)
        active = torch.ones(h.shape[0], 1, dtype=torch.bool) if lengths is None else (t < lengths)[:, None]
        h = torch.where(active, h_new, h)
        outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
    return (torch.stack(outs) if T else h0.new_zeros(0, *h0.shape)), h


def run_recurrence(backend, case, dtype):
    """ops.{gru,rnn}_recurrence on `backend` ("torch": torch_cell_recurrence):
    [out, h_n, d gates_x, d h0, d w_hh (, d b_hh)]."""
    args, lengths, g_out, g_h = recurrence_inputs(case, dtype)
    leaves = [None if a is None else leaf(a) for a in args]
    kind = case["kind"]
    if backend == "torch":
        out, h = torch_cell_recurrence(kind, *leaves, case["reverse"], lengths)
    elif kind == "gru":
        out, h = ops.gru_recurrence(*leaves, case["reverse"], lengths, backend)
    else:
        out, h = ops.rnn_recurrence(*leaves, kind[4:], case["reverse"], lengths, backend)
    diff = [a for a in leaves if a is not None]
    grads = torch.autograd.grad((out * g_out).sum() + (h * g_h).sum(), diff, allow_unused=True,
                                materialize_grads=True)
    return [out.detach(), h.detach(), *grads]


# ------------------------------------------------------------------------- hnrnn.nn modules


def module_kwargs(case):
    kw = dict(num_layers=case["layers"], bias=case["bias"], batch_first=case["batch_first"],
              bidirectional=case["bidirectional"], dropout=case["dropout"])
    if case["kind"] != "gru":
        kw["nonlinearity"] = case["kind"][4:]
    return kw


def module_inputs(case, dtype):
    """(input, h0 or None, output projection, state projection) for the case's input form."""
    r = _randn(case["seed"])
    T, B, I, H = case["T"], case["B"], case["I"], case["H"]
    D = 2 if case["bidirectional"] else 1
    LD = case["layers"] * D
    if case["form"] == "packed":
        x = pack_sequence([r(n, I).to(dtype) for n in case["lengths"]], enforce_sorted=False)
        g_out = r(x.data.shape[0], D * H)
    elif case["form"] == "unbatched":
        x, g_out = r(T, I), r(T, D * H)
    else:
        bt = (B, T) if case["batch_first"] else (T, B)
        x, g_out = r(*bt, I), r(*bt, D * H)
    state = (LD, H) if case["form"] == "unbatched" else (LD, B, H)
    h0, g_h = r(*state), r(*state)
    x = x if isinstance(x, PackedSequence) else x.to(dtype)
    return x, h0.to(dtype) if case["h0"] else None, g_out.to(dtype), g_h.to(dtype)


def run_module(mod, case, dtype):
    """Forward + backward of `mod` (train or eval as the case says, dropout masks from a fixed
    seed): [output, h_n, d input, (d h0,) d every parameter]."""
    x, h0, g_out, g_h = module_inputs(case, dtype)
    mod.train(case["training"])
    torch.manual_seed(case["seed"])
    return run_with_grads(mod, packed_leaf(x) if isinstance(x, PackedSequence) else leaf(x),
                          None if h0 is None else leaf(h0), g_out, g_h)


def module_trio(case, backend):
    """(torch.nn float64, torch.nn in the case's dtype, hnrnn.nn on `backend` in that dtype),
    all with the same weights."""
    torch.manual_seed(case["seed"])
    cls = {"gru": torch.nn.GRU, "rnn": torch.nn.RNN}[case["kind"][:3]]
    ref64 = cls(case["I"], case["H"], dtype=torch.float64, **module_kwargs(case))
    ref = copy.deepcopy(ref64).to(case["dtype"])
    ours = {"gru": hnrnn.nn.GRU, "rnn": hnrnn.nn.RNN}[case["kind"][:3]](
        case["I"], case["H"], dtype=case["dtype"], backend=backend, **module_kwargs(case))
    ours.load_state_dict(ref.state_dict())
    return ref64, ref, ours


# ------------------------------------------------------------------------- zoo models


def zoo_model_pair(case, backend, device="cpu"):
    """(the seed's eager model, the same weights on `backend`), both in the case's dtype on `device`."""
    torch.manual_seed(case["seed"])
    eager = MODELS[case["name"]](vocab_size=case["vocab"], hidden_size=case["hidden"], backend="eager")
    ours = MODELS[case["name"]](vocab_size=case["vocab"], hidden_size=case["hidden"], backend=backend)
    ours.load_state_dict(eager.state_dict())
    return eager.to(device, case["dtype"]), ours.to(device, case["dtype"])


def run_zoo_model(model, case):
    """Two batches (the second starts from any carried state), each forward + backward of a
    fixed projection: [output, every parameter's gradient, every buffer, carried state] per batch."""
    g = torch.Generator().manual_seed(case["seed"])
    model.train(case["training"])
    if model.stateful:
        model.reset()
    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    res = []
    for _ in range(2):
        x = torch.randint(0, case["vocab"], (case["B"], case["T"]), generator=g).to(device)
        model.zero_grad()
        out = model(x)
        proj = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device, dtype)
        (out * proj).sum().backward()
        res += [out.detach()] + [grad_or_zeros(p) for p in model.parameters()]
        res += [b.clone() for b in model.buffers()]
        if model.stateful:
            res.append(model.h.clone())
    return res
