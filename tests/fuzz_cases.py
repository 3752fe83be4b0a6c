"""Random cases (hypothesis strategies) and runners shared by the fuzz and determinism tests.

Each runner calls one public entry point and returns a flat list of tensors: outputs, states,
running statistics and the gradient of every differentiable input of a fixed random projection
of the outputs (zeros for an input the loss does not reach).
"""
import copy

import torch
from hypothesis import settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import hnrnn.nn
from hnrnn.ops import rnn as ops
from hnrnn.zoo import MODELS
from rnn_helpers import grad_or_zeros, leaf, packed_leaf, run_with_grads


def fuzz(share=1.0):
    """The loaded hypothesis profile (tests/conftest.py) with `share` of its example budget."""
    return settings(max_examples=max(1, round(settings().max_examples * share)))


DTYPES = st.sampled_from([torch.float32, torch.float64])
SEEDS = st.integers(0, 2 ** 16)
KINDS = st.sampled_from(["gru", "rnn_tanh", "rnn_relu"])


def _randn(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------------- zoo cell

@st.composite
def zoo_cell_cases(draw, max_b=9, max_t=6, max_h=40):
    """Keyword arguments of zoo_cell_cases.check_backend (the single-step op when step)."""
    training = draw(st.booleans())
    step = draw(st.booleans())
    return dict(B=draw(st.integers(2 if training else 1, max_b)), T=1 if step else draw(st.integers(1, max_t)),
                H=draw(st.integers(1, max_h)), V=draw(st.integers(1, 12)), norm_state=draw(st.booleans()),
                training=training, step=step, momentum=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
                eps=draw(st.sampled_from([1e-5, 1e-3])), seed=draw(SEEDS))


# ------------------------------------------------------------------------- recurrence ops

@st.composite
def recurrence_cases(draw, max_t=6, max_b=9, max_h=20):
    """Zero-size T, B and H included; lengths (a packed batch's) in [0, T], in any order."""
    T, B = draw(st.integers(0, max_t)), draw(st.integers(0, max_b))
    lengths = draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B))
    return dict(kind=draw(KINDS), T=T, B=B, H=draw(st.integers(0, max_h)), bias=draw(st.booleans()),
                reverse=draw(st.booleans()), lengths=lengths, seed=draw(SEEDS))


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

@st.composite
def module_cases(draw, max_layers=3, max_h=12, max_t=6, max_b=6):
    kind = draw(KINDS)
    layers = draw(st.integers(1, max_layers))
    form = draw(st.sampled_from(["batched", "unbatched", "packed"]))
    T = draw(st.integers(1, max_t))
    B = 1 if form == "unbatched" else draw(st.integers(1 if form == "packed" else 0, max_b))
    dtype = draw(DTYPES)
    # Dropout draws the same masks as torch.nn's only for unpacked float64 (the RNG stream
    # depends on the dtype, and packed data is dropped in another layout).
    dropout_ok = layers > 1 and form != "packed" and dtype == torch.float64
    return dict(kind=kind, I=draw(st.integers(1, 6)), H=draw(st.integers(1, max_h)), layers=layers,
                bias=draw(st.booleans()), batch_first=draw(st.booleans()), bidirectional=draw(st.booleans()),
                h0=draw(st.booleans()), form=form, T=T, B=B, dtype=dtype, training=draw(st.booleans()),
                dropout=draw(st.sampled_from([0.0, 0.5])) if dropout_ok else 0.0,
                lengths=draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if form == "packed" else None,
                seed=draw(SEEDS))


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

@st.composite
def zoo_model_cases(draw, names=tuple(MODELS), float64_names=tuple(MODELS), max_h=12, max_b=6, max_t=5):
    """float64 for the models in float64_names, in training or eval; float32 in eval only: in
    training, the batch statistics of these tiny random batches are ill-conditioned in float32
    (with B = 2 BatchNorm's output is +-1 and its input gradient pure cancellation), so two exact
    float32 implementations differ by far more than 2x (measured: 10x to 1e25x). Eval-mode
    BatchNorm is an affine map and stays within 2x; float32 training is covered at the op level."""
    name = draw(st.sampled_from(names))
    dtype = draw(DTYPES) if name in float64_names else torch.float32
    training = dtype == torch.float64 and draw(st.booleans())
    return dict(name=name, vocab=draw(st.integers(2, 15)), hidden=draw(st.integers(1, max_h)),
                B=draw(st.integers(2 if training else 1, max_b)), T=draw(st.integers(1, max_t)),
                training=training, dtype=dtype, seed=draw(SEEDS))


def zoo_model_pair(case, backend):
    """(the seed's eager model, the same weights on `backend`), both in the case's dtype."""
    torch.manual_seed(case["seed"])
    eager = MODELS[case["name"]](vocab_size=case["vocab"], hidden_size=case["hidden"], backend="eager")
    ours = MODELS[case["name"]](vocab_size=case["vocab"], hidden_size=case["hidden"], backend=backend)
    ours.load_state_dict(eager.state_dict())
    return eager.to(case["dtype"]), ours.to(case["dtype"])


def run_zoo_model(model, case):
    """Two batches (the second starts from any carried state), each forward + backward of a
    fixed projection: [output, every parameter's gradient, every buffer, carried state] per batch."""
    g = torch.Generator().manual_seed(case["seed"])
    model.train(case["training"])
    if model.stateful:
        model.reset()
    dtype = next(model.parameters()).dtype
    res = []
    for _ in range(2):
        x = torch.randint(0, case["vocab"], (case["B"], case["T"]), generator=g)
        model.zero_grad()
        out = model(x)
        proj = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
        (out * proj).sum().backward()
        res += [out.detach()] + [grad_or_zeros(p) for p in model.parameters()]
        res += [b.clone() for b in model.buffers()]
        if model.stateful:
            res.append(model.h.clone())
    return res
