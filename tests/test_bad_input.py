"""Bad input across the public API, as tables.

- hnrnn.nn.GRU / RNN behave as torch.nn.GRU / RNN and the zoo models as the seed's eager code:
  the same exception type where torch raises, else the same outputs and gradients, non-finite
  in the same places (float64, so "the same" is tight).
- The ops and the CLI, which have no torch counterpart, refuse with an error naming the problem.
The zoo cell op's own table is test_zoo_cell.py's BAD; corrupt and mismatched checkpoints are in
test_resume.py and test_learner.py; the fuzz tests cover zero-size T, B and H of the ops.
"""
import copy

import pytest
import torch

import hnrnn.nn
from hnrnn.cli import main
from hnrnn.ops import BackendUnavailableError
from hnrnn.ops.rnn import gru_recurrence, rnn_recurrence
from hnrnn.ops.zoo_cell import zoo_cell_sequence
from hnrnn.zoo import MODELS
from rnn_helpers import assert_within_2x_torch_error, grad_or_zeros, leaf, make_pair
from zoo_cell_cases import make_inputs

NAN, INF = float("nan"), float("inf")
pytestmark = pytest.mark.usefixtures("nan_empty")


def randn(*shape):
    """The same values on every call with the same shape (each side of a comparison makes its own)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape) + sum(shape)),
                       dtype=torch.float64)


def forward_backward(fn, *inputs):
    """Outputs, then the gradients of every float input and (for a module) parameter, of a fixed
    random projection of the outputs."""
    inputs = [leaf(t) if t.is_floating_point() else t for t in inputs]
    params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o * randn(*o.shape).to(o.dtype)).sum() for o in outs)
    if loss.requires_grad:  # not for an empty batch
        loss.backward()
    return ([o.detach() for o in outs] + [grad_or_zeros(t) for t in inputs if t.is_floating_point()]
            + [grad_or_zeros(p) for p in params])


RNN_NAMES = {"h_h.weight": "rnn.weight_hh_l0", "h_h.bias": "rnn.bias_hh_l0"}  # Model4/5's h_h


def with_value(name, index, value):
    """A row step: set one entry of a parameter or buffer, in place (both sides alike)."""
    def set_(mod):
        tensors = dict([*mod.named_parameters(), *mod.named_buffers()])
        with torch.no_grad():
            tensors[name if name in tensors else RNN_NAMES[name]][index] = value
        return mod
    return set_


def outcome(fn, mod):
    try:
        return fn(mod)
    except Exception as e:  # noqa: BLE001 - the exception is the outcome compared
        return e


def assert_same_outcome(ours, theirs, expect):
    """expect: the exception type torch's side raises, or None where it returns (so that a row
    whose both sides fail for a reason of the test's own cannot pass)."""
    if expect is None:
        assert not isinstance(theirs, Exception), f"the torch side raised {theirs!r}"
    else:
        assert isinstance(theirs, expect), f"the torch side gave {theirs!r}, not {expect.__name__}"
    if isinstance(theirs, Exception):
        assert isinstance(ours, type(theirs)), f"torch raised {theirs!r}; hnrnn gave {ours!r}"
        assert str(ours), "an exception with no message"
        return
    assert not isinstance(ours, Exception), f"torch returned; hnrnn raised {ours!r}"
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        # Non-finite in the same places (whether one is NaN or inf can depend on the order of the
        # arithmetic: hnrnn.reference's autograd gives NaN where torch's batch norm backward
        # multiplies an inf gamma last and gets inf), the same values elsewhere.
        assert a.shape == b.shape and torch.equal(a.isfinite(), b.isfinite()), f"tensor {i}: {a} vs {b}"
        torch.testing.assert_close(a[a.isfinite()], b[b.isfinite()], rtol=1e-9, atol=1e-10,
                                   msg=lambda m: f"tensor {i}: {m}")


# ------------------------------------------------------------------------- hnrnn.nn vs torch.nn

def x3(T=5, B=2, I=3):
    return randn(T, B, I)


def h3(B=2):
    return randn(1, B, 4)


def transposed(t):
    """A non-contiguous view with t's values (its last two dimensions swapped in memory)."""
    v = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not v.is_contiguous() and torch.equal(v, t)
    return v


def nan_at(t, index, value=NAN):
    t = t.clone()
    t[index] = value
    return t


MODULE_ROWS = {  # name: (call, what torch.nn raises or None)
    "int64 input": (lambda m: forward_backward(m, x3().long()), ValueError),
    "float32 input, float64 weights": (lambda m: forward_backward(m, x3().float()), ValueError),
    "float32 hx": (lambda m: forward_backward(m, x3(), h3().float()), RuntimeError),
    "input on another device": (lambda m: forward_backward(m, x3().to("meta")), RuntimeError),
    "hx on another device": (lambda m: forward_backward(m, x3(), h3().to("meta")), RuntimeError),
    "non-contiguous input": (lambda m: forward_backward(m, transposed(x3())), None),
    "non-contiguous hx": (lambda m: forward_backward(m, x3(), transposed(h3())), None),
    "empty batch": (lambda m: forward_backward(m, x3(B=0)), None),
    "empty batch with hx": (lambda m: forward_backward(m, x3(B=0), h3(B=0)), None),
    "no time steps": (lambda m: forward_backward(m, x3(T=0)), RuntimeError),
    "no time steps, unbatched": (lambda m: forward_backward(m, randn(0, 3)), RuntimeError),
    "no input features": (lambda m: forward_backward(m, x3(I=0)), RuntimeError),
    "NaN in the input": (lambda m: forward_backward(m, nan_at(x3(), (1, 0, 2))), None),
    "inf in the input": (lambda m: forward_backward(m, nan_at(x3(), (2, 1, 0), INF)), None),
    "-inf in hx": (lambda m: forward_backward(m, x3(), nan_at(h3(), (0, 1, 3), -INF)), None),
    "NaN in weight_hh": (lambda m: forward_backward(with_value("weight_hh_l0", (1, 2), NAN)(m), x3()), None),
    "inf in weight_hh": (lambda m: forward_backward(with_value("weight_hh_l0", (0, 3), INF)(m), x3()), None),
    "-inf in weight_ih": (lambda m: forward_backward(with_value("weight_ih_l0", (2, 0), -INF)(m), x3()), None),
    "inf in bias_hh": (lambda m: forward_backward(with_value("bias_hh_l0", 1, INF)(m), x3()), None),
    "NaN in bias_ih": (lambda m: forward_backward(with_value("bias_ih_l0", 0, NAN)(m), x3()), None),
}


@pytest.mark.parametrize("backend", ["cpu", "reference", pytest.param("triton", marks=pytest.mark.interpreter)])
@pytest.mark.parametrize("kind", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("row", MODULE_ROWS)
def test_modules_like_torch_nn(row, kind, backend):
    kw = {} if kind == "gru" else dict(nonlinearity=kind[4:])
    theirs, ours = make_pair(kind[:3], 3, 4, backend, **kw)
    call, expect = MODULE_ROWS[row]
    assert_same_outcome(outcome(call, ours), outcome(call, theirs), expect)


# ------------------------------------------------------------------------- zoo models vs eager

def ids(B=3, T=4, V=5):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(B * 10 + T))


def run_model(train, *steps, x=None):
    """Apply `steps` to the model, set train/eval, run forward + backward on `x` (default: ids())."""
    def fn(m):
        for s in steps:
            m = s(m)
        m.train(train)
        return forward_backward(m, ids() if x is None else x())
    return fn


TORCH_MODULE_MODELS = ("Model4", "Model5")  # BatchNorm over all B * T rows: a batch of one is fine
ZOO_ROWS = {  # name: (call, what the eager model raises or None)
    "float ids": (run_model(True, x=lambda: ids().double()), RuntimeError),
    "ids = vocab size": (run_model(True, x=lambda: ids().fill_(5)), IndexError),
    "negative ids": (run_model(True, x=lambda: nan_at(ids(), (1, 2), -1)), IndexError),
    "int32 ids": (run_model(True, x=lambda: ids().int()), None),
    "non-contiguous ids": (run_model(True, x=lambda: transposed(ids())), None),
    "empty batch": (run_model(True, x=lambda: ids(B=0)), None),
    "empty batch, eval": (run_model(False, x=lambda: ids(B=0)), None),
    "batch of one, training": (run_model(True, x=lambda: ids(B=1)), ValueError),
    "NaN in i_h.weight": (run_model(True, with_value("i_h.weight", (0, 2), NAN)), None),
    "NaN in i_h.weight, eval": (run_model(False, with_value("i_h.weight", (0, 2), NAN)), None),
    "inf in h_h.weight": (run_model(True, with_value("h_h.weight", (1, 3), INF)), None),
    "inf in h_h.weight, eval": (run_model(False, with_value("h_h.weight", (1, 3), INF)), None),
    "-inf in h_h.bias, eval": (run_model(False, with_value("h_h.bias", 2, -INF)), None),
    "inf in bn.weight": (run_model(True, with_value("bn.weight", 1, INF)), None),
    "NaN in bn.bias, eval": (run_model(False, with_value("bn.bias", 0, NAN)), None),
    "NaN in bn.running_var, eval": (run_model(False, with_value("bn.running_var", 3, NAN)), None),
    "inf in h_o.weight": (run_model(True, with_value("h_o.weight", (4, 1), INF)), None),
}


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("row", ZOO_ROWS)
def test_zoo_models_like_eager(row, name, backend):
    torch.manual_seed(0)
    theirs = MODELS[name](vocab_size=5, hidden_size=4, backend="eager").double()
    ours = MODELS[name](vocab_size=5, hidden_size=4, backend=backend).double()
    ours.load_state_dict(theirs.state_dict())
    call, expect = ZOO_ROWS[row]
    if row == "batch of one, training" and name in TORCH_MODULE_MODELS:
        expect = None
    assert_same_outcome(outcome(call, ours), outcome(call, theirs), expect)


# Where the eager code's outcome is an accident of the seed's loop, the fused models give a
# clear error of their own instead.
FUSED_ONLY_ROWS = [
    ("Model2", lambda m: m(ids(T=0)), ValueError, r"ids must be \(B, T\) with T >= 1, got shape \(3, 0\)"),
    ("Model3", lambda m: m(ids()[0]), ValueError, r"ids must be \(B, T\) with T >= 1, got shape \(4,\)"),
    ("Model1", lambda m: m(ids().to("meta")), RuntimeError, "expected all tensors on one device"),
]


@pytest.mark.parametrize("name,fn,exc,match", FUSED_ONLY_ROWS, ids=[r[0] for r in FUSED_ONLY_ROWS])
def test_fused_zoo_models_clear_errors(name, fn, exc, match):
    with pytest.raises(exc, match=match):
        fn(MODELS[name](vocab_size=5, hidden_size=4, backend="cpu"))


# ------------------------------------------------------------------------- dtypes without a kernel

@pytest.mark.parametrize("model", ["Model1", "Model5"])
def test_float16_models_on_the_automatic_backend_run_like_eager(model):
    # The CPU kernels compute in float32 / float64: the automatic choice takes the reference.
    # Low precision: within 2x of the eager float16 model's error (eval: see fuzz_cases.zoo_model_cases).
    torch.manual_seed(0)
    truth = MODELS[model](vocab_size=5, hidden_size=4, backend="eager").double().eval()
    ours = MODELS[model](vocab_size=5, hidden_size=4, backend=None).eval()
    ours.load_state_dict(truth.state_dict())
    got = forward_backward(ours.half(), ids())
    assert all(t.dtype == torch.float16 for t in got)
    assert_within_2x_torch_error(got, forward_backward(copy.deepcopy(truth).half(), ids()),
                                 forward_backward(truth, ids()), floor=1e-3)


@pytest.mark.parametrize("call", [
    lambda: hnrnn.nn.GRU(3, 4, backend="cpu").half()(x3().half()),
    lambda: zoo_cell_sequence(ids(), *[f.half() for f in make_inputs(3, 4, 6, V=5)[1]], True, True, backend="cpu"),
], ids=["GRU", "zoo_cell"])
def test_explicit_backend_without_a_kernel_for_the_dtype(call):
    with pytest.raises(TypeError, match=r"the cpu backend computes in float32, float64, got torch.float16; "
                                        "the reference backend"):
        call()


# ------------------------------------------------------------------------- ops: clear errors

def rec_args(T=4, B=3, H=5, gates=3):
    return dict(gates_x=randn(T, B, gates * H), h0=randn(B, H), w_hh=randn(gates * H, H), b_hh=randn(gates * H))


def rec_call(op=gru_recurrence, gates=3, lengths=None, backend="cpu", **changes):
    def call():
        a = rec_args(gates=gates)
        a.update({k: (v(a) if callable(v) else v) for k, v in changes.items()})
        return op(**a, lengths=lengths, backend=backend)
    return call


OP_ROWS = [
    ("lengths above T", rec_call(lengths=torch.tensor([4, 5, 1])), ValueError, r"lengths must be in \[0, T\] = \[0, 4\], found 5"),
    ("negative lengths", rec_call(lengths=torch.tensor([4, -1, 1])), ValueError, r"lengths must be in \[0, T\].*found -1"),
    ("float lengths", rec_call(lengths=torch.tensor([4.0, 2.0, 1.0])), TypeError, "lengths must be an integer tensor"),
    ("lengths of another batch", rec_call(lengths=torch.tensor([4, 2])), ValueError, r"lengths must be \(B,\) = \(3,\)"),
    ("w_hh of another dtype", rec_call(w_hh=lambda a: a["w_hh"].float()), TypeError, "w_hh has dtype torch.float32"),
    ("h0 on another device", rec_call(h0=lambda a: a["h0"].to("meta")), RuntimeError, "h0 is on meta"),
    ("gates_x not a tensor", rec_call(gates_x=lambda a: a["gates_x"].tolist()), TypeError, "gates_x must be a torch.Tensor"),
    ("int gates_x", rec_call(gates_x=lambda a: a["gates_x"].long()), TypeError, "gates_x must be a floating point"),
    ("gates_x of another width", rec_call(gates_x=lambda a: a["gates_x"][..., :-1]), ValueError, r"gates_x must be \(T, B, 15\)"),
    ("rnn w_hh of GRU shape", rec_call(rnn_recurrence, gates=1, w_hh=randn(15, 5)), ValueError, r"w_hh \(5, 5\)"),
    ("unknown backend", rec_call(backend="fast"), BackendUnavailableError, "unknown backend 'fast'"),
]


@pytest.mark.parametrize("name,call,exc,match", OP_ROWS, ids=[r[0] for r in OP_ROWS])
def test_recurrence_ops_clear_errors(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("op,gates", [(gru_recurrence, 3), (rnn_recurrence, 1)], ids=["gru", "rnn"])
def test_recurrence_ops_take_non_contiguous_inputs(op, gates, backend):
    a = rec_args(gates=gates)
    def call(*tensors):
        return op(*tensors, backend=backend)
    want = forward_backward(call, *a.values())
    views = [transposed(a["gates_x"]), transposed(a["h0"]), transposed(a["w_hh"]), a["b_hh"]]
    torch.testing.assert_close(forward_backward(call, *views), want, rtol=1e-12, atol=0)


# ---------------------------------------------------- compiled ops called directly (torch.ops.hnrnn.*)
# The Python entry points check first; the C++ checks (csrc/op_checks.cpp, shared by the CPU and
# CUDA kernels) still refuse what would make a kernel read out of bounds, naming the input.

def direct_rec(op="gru_recurrence", gates=3, lengths=None, **changes):
    def call():
        a = rec_args(gates=gates)
        a.update({k: (v(a) if callable(v) else v) for k, v in changes.items()})
        fn = getattr(torch.ops.hnrnn, op).default
        if op.startswith("rnn"):
            return fn(a["gates_x"], a["h0"], a["w_hh"], a["b_hh"], False, False, lengths)
        return fn(a["gates_x"], a["h0"], a["w_hh"], a["b_hh"], False, lengths)
    return call


def direct_rec_backward(ws_width=5, lengths=None):
    a = rec_args()
    T, B, H = 4, 3, 5
    return lambda: torch.ops.hnrnn.gru_recurrence_backward.default(
        randn(T, B, H), randn(B, H), randn(T, B, ws_width * H), a["w_hh"], False, lengths)


def direct_network_backward(hx_layers=1):
    """rnn_network_backward of a 1-layer RNN (B = 3, H = 5) given an hx of `hx_layers` layers."""
    def call():
        T, B, I, H = 4, 3, 2, 5
        x, hx, weights = randn(T, B, I), randn(1, B, H), [randn(H, I), randn(H, H)]
        _, h_n, saved = torch.ops.hnrnn.rnn_network(x, hx, weights, 1, 1, False, 0.0, False, None)
        return torch.ops.hnrnn.rnn_network_backward.default(
            randn(T, B, H), randn(*h_n.shape), x, randn(hx_layers, B, H), weights, saved, 1, 1, False, None, True)
    return call


def direct_zoo(**changes):
    def call():
        ids, floats = make_inputs(3, 2, 5)
        a = dict(zip(("ids", "h0", "emb", "weight", "bias", "bn_weight", "bn_bias", "rm", "rv"), [ids] + floats))
        a.update({k: (v(a) if callable(v) else v) for k, v in changes.items()})
        return torch.ops.hnrnn.zoo_cell_forward.default(*a.values(), False, True, 0.1, 1e-5)
    return call


DIRECT_ROWS = [
    ("lengths of another batch", direct_rec(lengths=torch.tensor([4, 2])), ValueError,
     r"gru_recurrence: lengths must be \(3,\), got \[2\]"),
    ("int32 lengths", direct_rec(lengths=torch.tensor([4, 2, 1], dtype=torch.int32)), TypeError,
     "lengths must be int64"),
    ("b_hh of another dtype", direct_rec(b_hh=lambda a: a["b_hh"].float()), TypeError,
     "b_hh has dtype Float but h0 has Double"),
    ("rnn b_hh of GRU size", direct_rec("rnn_recurrence", gates=1, b_hh=randn(15)), ValueError,
     "rnn_recurrence: b_hh must have 5 elements"),
    ("workspace of RNN width", direct_rec_backward(ws_width=1), ValueError,
     r"gru_recurrence_backward: the workspace must be \(4, 3, 25\)"),
    ("backward lengths of another batch", direct_rec_backward(lengths=torch.tensor([1])), ValueError,
     r"lengths must be \(3,\)"),
    ("network backward hx of another shape", direct_network_backward(hx_layers=2), ValueError,
     r"rnn_network_backward: hx must be the forward's initial state, \[1, 3, 5\] Double"),
    ("zoo weight not square", direct_zoo(weight=lambda a: a["weight"][:, :-1]), ValueError,
     r"zoo_cell: weight must be \(5, 5\)"),
    ("zoo running_var of another dtype", direct_zoo(rv=lambda a: a["rv"].float()), TypeError,
     "running_var has dtype Float but h0 has Double"),
    ("zoo non-contiguous emb", direct_zoo(emb=lambda a: a["emb"].t().contiguous().t()), RuntimeError,
     "emb must be contiguous"),
]


@pytest.mark.parametrize("name,call,exc,match", DIRECT_ROWS, ids=[r[0] for r in DIRECT_ROWS])
def test_compiled_ops_called_directly_clear_errors(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------- CLI: unreadable text

TEXT_FILES = {
    "missing": (None, "text file not found: {path}"),
    "empty": (b"", "{path} needs at least two non-empty lines"),
    "binary": (b"\x00\x01binary", "{path} looks like a binary file"),
    "a directory": ("dir", "{path} is not a regular file"),
    "not UTF-8": ("caf\xe9\nna\xefve\n".encode("latin-1"), "{path} is not UTF-8 text"),
    "one line": (b"just one line\n", "{path} needs at least two non-empty lines"),
}


@pytest.mark.parametrize("kind", TEXT_FILES)
def test_cli_unreadable_text_file_is_one_clear_line(kind, tmp_path, capsys):
    content, message = TEXT_FILES[kind]
    path = tmp_path / "input"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    assert main(["train", "--model", "Model1", "--text", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hnrnn train: error: {message.format(path=path)}")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []  # nothing written
