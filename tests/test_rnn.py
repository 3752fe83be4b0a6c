"""hnrnn.nn.GRU / hnrnn.nn.RNN and the recurrence ops against torch.nn and hnrnn.reference (CPU tier).

Float64 is compared tightly with torch.nn in float64; float32 is compared with the float64
truth and must be within 2x of torch.nn's own float32 error. The configuration grid of the
issue is sampled (each parameter value appears at least once) to keep the tier fast.
"""
import pickle

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import hnrnn
import hnrnn.nn
from hnrnn import reference
from hnrnn.ops import rnn as ops
from hnrnn.ops._backend import BackendUnavailableError
from rnn_helpers import (assert_matches, assert_within_2x_torch_error, cast_module, check_module_saves_only_for_backward,
                         check_unsaved_forward, leaf, make_pair, packed_leaf, run_with_grads)

BACKENDS = ["cpu", "reference"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

# kind, hidden, layers, bias, batch_first, bidirectional, h0, T, B, nonlinearity
GRID = [
    ("gru", 64, 2, True, True, False, True, 20, 64, None),     # the seed's Model5
    ("rnn", 64, 1, True, True, False, True, 20, 64, "tanh"),   # the seed's Model4
    ("gru", 1, 1, True, False, False, False, 1, 1, None),
    ("gru", 7, 3, False, False, True, True, 33, 5, None),
    ("gru", 130, 1, True, True, True, False, 4, 3, None),
    ("gru", 7, 2, True, False, True, False, 9, 17, None),
    ("rnn", 1, 2, False, True, True, True, 6, 2, "relu"),
    ("rnn", 7, 3, True, False, False, True, 33, 8, "tanh"),
    ("rnn", 130, 2, True, False, True, True, 3, 4, "relu"),
    ("rnn", 64, 1, False, True, True, False, 1, 64, "tanh"),
    ("rnn", 7, 1, True, False, False, False, 12, 1, "relu"),
]


def _kw(layers, bias, batch_first, bidir, nonlinearity):
    kw = dict(num_layers=layers, bias=bias, batch_first=batch_first, bidirectional=bidir)
    if nonlinearity is not None:
        kw["nonlinearity"] = nonlinearity
    return kw


def _inputs(I, H, layers, bidir, batch_first, T, B, h0_given, dtype):
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype)
    D = 2 if bidir else 1
    h0 = torch.randn(layers * D, B, H, dtype=dtype) if h0_given else None
    g_out = torch.randn((B, T, D * H) if batch_first else (T, B, D * H), dtype=dtype)
    g_h = torch.randn(layers * D, B, H, dtype=dtype)
    return x, h0, g_out, g_h


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", GRID, ids=lambda c: "-".join(map(str, c)))
def test_float64_matches_torch_nn(cfg, backend):
    kind, H, layers, bias, bf, bidir, h0_given, T, B, nl = cfg
    I = 5
    ref, ours = make_pair(kind, I, H, backend, torch.float64, **_kw(layers, bias, bf, bidir, nl))
    x, h0, g_out, g_h = _inputs(I, H, layers, bidir, bf, T, B, h0_given, torch.float64)
    want = run_with_grads(ref, leaf(x), None if h0 is None else leaf(h0), g_out, g_h)
    got = run_with_grads(ours, leaf(x), None if h0 is None else leaf(h0), g_out, g_h)
    assert_matches(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("cfg", GRID[:2] + GRID[3:5] + GRID[7:9], ids=lambda c: "-".join(map(str, c)))
def test_float32_within_2x_of_torch_error(cfg):
    kind, H, layers, bias, bf, bidir, h0_given, T, B, nl = cfg
    I = 16
    ref64, _ = make_pair(kind, I, H, "cpu", torch.float64, **_kw(layers, bias, bf, bidir, nl))
    ref32 = cast_module(ref64, torch.float32)
    ours = {"gru": hnrnn.nn.GRU, "rnn": hnrnn.nn.RNN}[kind](I, H, backend="cpu", **_kw(layers, bias, bf, bidir, nl))
    ours.load_state_dict(ref32.state_dict())
    x, h0, g_out, g_h = _inputs(I, H, layers, bidir, bf, T, B, h0_given, torch.float64)
    h0_ = (lambda d: None if h0 is None else leaf(h0.to(d)))
    truth = run_with_grads(ref64, leaf(x), h0_(torch.float64), g_out, g_h)
    theirs = run_with_grads(ref32, leaf(x.float()), h0_(torch.float32), g_out.float(), g_h.float())
    got = run_with_grads(ours, leaf(x.float()), h0_(torch.float32), g_out.float(), g_h.float())
    assert all(g.dtype == torch.float32 for g in got)
    assert_within_2x_torch_error(got, theirs, truth)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
@pytest.mark.parametrize("h0_given", [False, True])
def test_unbatched_input(kind, h0_given):
    ref, ours = make_pair(kind, 3, 6, "cpu", num_layers=2, bidirectional=True)
    x = torch.randn(7, 3, dtype=torch.float64)
    h0 = torch.randn(4, 6, dtype=torch.float64) if h0_given else None
    g_out, g_h = torch.randn(7, 12, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    want = run_with_grads(ref, leaf(x), None if h0 is None else leaf(h0), g_out, g_h)
    got = run_with_grads(ours, leaf(x), None if h0 is None else leaf(h0), g_out, g_h)
    assert got[0].shape == (7, 12) and got[1].shape == (4, 6)
    assert_matches(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,bidir,layers", [("gru", True, 2), ("rnn", True, 1), ("gru", False, 3)])
def test_packed_sequence_unsorted_lengths(kind, bidir, layers, backend):
    H, I = 5, 4
    ref, ours = make_pair(kind, I, H, backend, num_layers=layers, bidirectional=bidir)
    lengths = [3, 7, 1, 7, 4]  # unsorted, with ties
    seqs = [torch.randn(n, I, dtype=torch.float64) for n in lengths]
    packed = pack_sequence(seqs, enforce_sorted=False)
    D = 2 if bidir else 1
    h0 = torch.randn(layers * D, len(lengths), H, dtype=torch.float64)
    g_out = torch.randn(packed.data.shape[0], D * H, dtype=torch.float64)
    g_h = torch.randn(layers * D, len(lengths), H, dtype=torch.float64)
    for h in (None, h0):
        want = run_with_grads(ref, packed_leaf(packed), None if h is None else leaf(h), g_out, g_h)
        got = run_with_grads(ours, packed_leaf(packed), None if h is None else leaf(h), g_out, g_h)
        assert_matches(got, want, atol=1e-10, rtol=1e-9)
    out, _ = ours(packed)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_dropout_training_uses_torch_rng_stream(kind, backend):
    # ATen's CPU RNN applies at::dropout to each layer's (T, B, D*H) output but the last;
    # so does hnrnn (the network op in C++, the other backends in Python), so with the same
    # seed the masks, outputs and gradients are identical.
    ref, ours = make_pair(kind, 4, 6, backend, num_layers=3, dropout=0.5, bidirectional=True, batch_first=True)
    x, h0, g_out, g_h = _inputs(4, 6, 3, True, True, 9, 5, True, torch.float64)
    ref.train(), ours.train()
    torch.manual_seed(123)
    want = run_with_grads(ref, leaf(x), leaf(h0), g_out, g_h)
    torch.manual_seed(123)
    got = run_with_grads(ours, leaf(x), leaf(h0), g_out, g_h)
    assert_matches(got, want, atol=1e-10, rtol=1e-9)
    # and dropout really acted: a different seed gives a different output
    torch.manual_seed(124)
    assert not torch.allclose(ours(x, h0)[0], got[0])
    # eval: no dropout, deterministic, equal to torch.nn
    ref.eval(), ours.eval()
    assert_matches(list(ours(x, h0)), list(ref(x, h0)), atol=1e-10, rtol=1e-9)
    assert torch.equal(ours(x, h0)[0], ours(x, h0)[0])


def test_dropout_on_packed_input_statistics():
    # Packed input: ATen drops on the packed data, hnrnn on the padded tensor, so the RNG
    # streams differ; check the behaviour instead: train differs from eval, eval is exact.
    ref, ours = make_pair("gru", 3, 8, "cpu", num_layers=2, dropout=0.3)
    packed = pack_sequence([torch.randn(n, 3, dtype=torch.float64) for n in (5, 2, 4)], enforce_sorted=False)
    ours.train()
    outs = torch.stack([ours(packed)[0].data for _ in range(4)])
    assert not torch.allclose(outs[0], outs[1])
    ours.eval(), ref.eval()
    assert_matches([ours(packed)[0].data], [ref(packed)[0].data], atol=1e-10, rtol=1e-9)


# ------------------------------------------------------------------ the ops themselves

@pytest.mark.parametrize("kind", ["gru", "rnn_tanh", "rnn_relu"])
def test_cpu_kernels_split_batch_across_threads(kind):
    # each thread runs the whole time loop on its own slice of batch rows (16+ rows a slice)
    torch.set_num_threads(2)
    T, B, H = 3, 70, 5
    G = 3 if kind == "gru" else 1
    gx = torch.randn(T, B, G * H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    w = torch.randn(G * H, H, dtype=torch.float64, requires_grad=True)
    b = torch.randn(G * H, dtype=torch.float64, requires_grad=True)
    lens = torch.randint(0, T + 1, (B,))
    res = []
    for backend in ("cpu", "reference"):
        if kind == "gru":
            out, h = ops.gru_recurrence(gx, h0, w, b, True, lens, backend)
        else:
            out, h = ops.rnn_recurrence(gx, h0, w, b, kind[4:], True, lens, backend)
        res.append([out, h, *torch.autograd.grad((out * out).sum() + h.sum(), (gx, h0, w, b))])
    assert_matches(res[0], res[1], atol=1e-12, rtol=1e-10)


def _op_args(kind, T, B, H, bias, lengths, dtype=torch.float64, requires_grad=True):
    G = 3 if kind == "gru" else 1
    gx = torch.randn(T, B, G * H, dtype=dtype, requires_grad=requires_grad)
    h0 = torch.randn(B, H, dtype=dtype, requires_grad=requires_grad)
    w = (torch.randn(G * H, H, dtype=dtype) / H ** 0.5).requires_grad_(requires_grad)
    b = torch.randn(G * H, dtype=dtype, requires_grad=requires_grad) if bias else None
    lens = torch.tensor(lengths, dtype=torch.int64) if lengths is not None else None
    return gx, h0, w, b, lens


@pytest.mark.parametrize("kind", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]])
def test_recurrence_gradcheck(kind, reverse, lengths):
    gx, h0, w, b, lens = _op_args(kind[:3], 4, 3, 3, True, lengths)
    if kind == "gru":
        f = lambda gx, h0, w, b: ops.gru_recurrence(gx, h0, w, b, reverse, lens, "cpu")  # noqa: E731
    else:
        f = lambda gx, h0, w, b: ops.rnn_recurrence(gx, h0, w, b, kind[4:], reverse, lens, "cpu")  # noqa: E731
    assert torch.autograd.gradcheck(f, (gx, h0, w, b))


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_module_gradcheck(kind):
    _, ours = make_pair(kind, 2, 3, "cpu", num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    params = list(ours.parameters())

    def f(x, h0, *ps):
        out, h = torch.func.functional_call(ours, dict(zip([n for n, _ in ours.named_parameters()], ps)), (x, h0))
        return out, h
    assert torch.autograd.gradcheck(f, (x, h0, *params))


@pytest.mark.parametrize("kind", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("reverse,bias,lengths", [(False, True, None), (True, False, [2, 5, 3])])
def test_recurrence_matches_reference_layer(kind, reverse, bias, lengths):
    # the ops on gates_x = x W_ih^T + b_ih against the ground-truth layer of hnrnn.reference
    T, B, I, H = 5, 3, 4, 6
    G = 3 if kind == "gru" else 1
    x, h0 = torch.randn(T, B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    w_ih, w_hh = torch.randn(G * H, I, dtype=torch.float64), torch.randn(G * H, H, dtype=torch.float64)
    b_ih, b_hh = (torch.randn(G * H, dtype=torch.float64) for _ in range(2)) if bias else (None, None)
    gx = torch.nn.functional.linear(x, w_ih, b_ih)
    if kind == "gru":
        out, h = ops.gru_recurrence(gx, h0, w_hh, b_hh, reverse, None, "cpu")
    else:
        out, h = ops.rnn_recurrence(gx, h0, w_hh, b_hh, kind[4:], reverse, None, "cpu")
    want_out, want_h = reference.recurrent_layer(x, h0, w_ih, w_hh, b_ih, b_hh, kind, reverse)
    assert_matches([out, h], [want_out, want_h], atol=1e-12, rtol=1e-10)
    if lengths is not None:  # masking: each sequence alone, unpadded, gives the same result
        lens = torch.tensor(lengths)
        f = ops.gru_recurrence if kind == "gru" else ops.rnn_recurrence
        extra = () if kind == "gru" else (kind[4:],)
        out, h = f(gx, h0, w_hh, b_hh, *extra, reverse, lens, "cpu")
        for i, n in enumerate(lengths):
            o_i, h_i = reference.recurrent_layer(x[:n, i:i + 1], h0[i:i + 1], w_ih, w_hh, b_ih, b_hh, kind, reverse)
            assert_matches([out[:n, i:i + 1], h[i:i + 1]], [o_i, h_i], atol=1e-12, rtol=1e-10)
            assert torch.all(out[n:, i] == 0)


@pytest.mark.parametrize("op,args", [
    ("gru_recurrence", lambda: _op_args("gru", 3, 2, 4, True, None)[:4] + (False, None)),
    ("gru_recurrence", lambda: _op_args("gru", 3, 2, 4, False, [1, 3])[:3] + (None, True, torch.tensor([1, 3]))),
    ("rnn_recurrence", lambda: _op_args("rnn", 3, 2, 4, True, None)[:4] + (True, False, None)),
    ("rnn_recurrence", lambda: _op_args("rnn", 3, 2, 4, False, None)[:3] + (None, False, True, torch.tensor([3, 2]))),
])
def test_opcheck(op, args):
    torch.library.opcheck(getattr(torch.ops.hnrnn, op).default, args())


def compiled_forward_op(kind):
    """The compiled forward op of `kind`, called as op(gates_x, h0, w_hh, b_hh, reverse, lengths, save)."""
    if kind == "gru":
        return torch.ops.hnrnn.gru_recurrence
    return lambda gx, h0, w, b, reverse, lens, save: torch.ops.hnrnn.rnn_recurrence(
        gx, h0, w, b, kind == "rnn_relu", reverse, lens, save)


@pytest.mark.parametrize("kind", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("reverse,lengths", [(False, None), (True, [4, 1, 3])])
def test_forward_without_save_writes_no_workspace(kind, reverse, lengths):
    check_unsaved_forward(compiled_forward_op(kind), kind, reverse, lengths)


@pytest.mark.parametrize("case", [dict(mode=0, bias=True, bidirectional=True),
                                  dict(mode=2, bias=False, bidirectional=False, lengths=[4, 1, 3], layers=3,
                                       dropout=0.5, train=True)])
def test_network_without_save_keeps_nothing(case):
    args = _network_args(**case)
    torch.manual_seed(0)  # the same dropout noise in both calls
    out, h_n, saved = torch.ops.hnrnn.rnn_network(*args, True)
    torch.manual_seed(0)
    unsaved = torch.ops.hnrnn.rnn_network(*args, False)
    assert saved and unsaved[2] == []
    assert torch.equal(unsaved[0], out) and torch.equal(unsaved[1], h_n)
    args[2][0].requires_grad_(True)
    with pytest.raises(ValueError, match="rnn_network: save=False, but autograd records this call"):
        torch.ops.hnrnn.rnn_network(*args, False)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_module_saves_workspace_only_for_backward(kind):
    _, ours = make_pair(kind, 3, 5, "cpu", num_layers=2, bidirectional=True)
    check_module_saves_only_for_backward(ours, torch.randn(4, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize("op,args", [
    ("gru_recurrence", lambda: _op_args("gru", 3, 2, 4, True, [3, 1], requires_grad=False)[:4]
     + (True, torch.tensor([3, 1]), False)),
    ("rnn_recurrence", lambda: _op_args("rnn", 3, 2, 4, False, None, requires_grad=False)[:4]
     + (True, False, None, False)),
    ("rnn_network", lambda: _network_args(0, True, True) + [False]),
])
def test_opcheck_without_save(op, args):
    torch.library.opcheck(getattr(torch.ops.hnrnn, op).default, args())


def test_opcheck_backward_ops():
    gx, h0, w, b, _ = _op_args("gru", 3, 2, 4, True, None, requires_grad=False)
    out, h_n, ws = torch.ops.hnrnn.gru_recurrence(gx, h0, w, b, False, None)
    torch.library.opcheck(torch.ops.hnrnn.gru_recurrence_backward.default,
                          (torch.randn_like(out), torch.randn_like(h_n), ws, w, False, None))
    gx, h0, w, b, _ = _op_args("rnn", 3, 2, 4, True, None, requires_grad=False)
    out, h_n, ws = torch.ops.hnrnn.rnn_recurrence(gx, h0, w, b, False, True, None)
    torch.library.opcheck(torch.ops.hnrnn.rnn_recurrence_backward.default,
                          (torch.randn_like(out), torch.randn_like(h_n), ws, w, False, True, None))


def _network_args(mode, bias, bidirectional, lengths=None, dropout=0.0, train=False, layers=2):
    T, B, I, H = 4, 3, 5, 4
    D = 2 if bidirectional else 1
    G = 3 if mode == 0 else 1
    weights = []
    for layer in range(layers):
        n_in = I if layer == 0 else D * H
        for _ in range(D):
            weights += [torch.randn(G * H, n_in, dtype=torch.float64) / 2, torch.randn(G * H, H, dtype=torch.float64) / 2]
            if bias:
                weights += [torch.randn(G * H, dtype=torch.float64), torch.randn(G * H, dtype=torch.float64)]
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = torch.randn(layers * D, B, H, dtype=torch.float64)
    lens = torch.tensor(lengths) if lengths is not None else None
    return [x, hx, weights, mode, layers, bidirectional, dropout, train, lens]


NETWORK_CASES = [
    dict(mode=0, bias=True, bidirectional=True),
    dict(mode=1, bias=False, bidirectional=False, lengths=[4, 1, 3]),
    dict(mode=2, bias=True, bidirectional=True, lengths=[2, 4, 3], layers=3),
    dict(mode=0, bias=True, bidirectional=False, layers=1),
]


@pytest.mark.parametrize("case", NETWORK_CASES)
def test_opcheck_network_ops(case):
    args = _network_args(**case)
    for t in [args[0], args[1], *args[2]]:
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.hnrnn.rnn_network.default, args)
    with torch.no_grad():
        out, h_n, saved = torch.ops.hnrnn.rnn_network(*args)
    x, hx, weights, mode, layers, bidirectional, _, _, lens = [a.detach() if isinstance(a, torch.Tensor) else a
                                                               for a in args]
    weights = [w.detach() for w in weights]
    torch.library.opcheck(torch.ops.hnrnn.rnn_network_backward.default,
                          (torch.randn_like(out), torch.randn_like(h_n), x, hx, weights, saved, mode, layers,
                           bidirectional, lens, True))


@pytest.mark.parametrize("mode", [0, 2])
def test_network_gradcheck_through_dropout(mode):
    # The same seed before each call gives the same dropout noise, so gradcheck's finite
    # differences see one function; checks the noise's backward and every weight gradient.
    x, hx, weights, *rest = _network_args(mode, True, True, dropout=0.4, train=True)
    inputs = [t.requires_grad_(True) for t in [x, hx, *weights]]

    def f(x, hx, *weights):
        torch.manual_seed(7)
        out, h_n, _ = torch.ops.hnrnn.rnn_network(x, hx, list(weights), *rest)
        return out, h_n
    torch.manual_seed(7)
    noise = torch.ops.hnrnn.rnn_network(x, hx, weights, *rest)[2][-1]  # between layers 0 and 1
    assert (noise == 0).any() and (noise == 1 / 0.6).any()
    assert torch.autograd.gradcheck(f, inputs)


# ------------------------------------------------------------------ drop-in contract

@pytest.mark.parametrize("args,kw", [
    ((64, 64, 2), dict(batch_first=True)),
    ((3, 5), dict(bias=False, num_layers=2, dropout=0.25, bidirectional=True)),
    ((3, 5, 3, True, True, 0.1, True), {}),
])
def test_same_parameters_init_and_repr(args, kw):
    for tcls, ocls in [(torch.nn.GRU, hnrnn.nn.GRU), (torch.nn.RNN, hnrnn.nn.RNN)]:
        a = args[:3] + ("relu",) + args[3:] if tcls is torch.nn.RNN and len(args) > 3 else args
        torch.manual_seed(7)
        ref = tcls(*a, **kw)
        torch.manual_seed(7)
        ours = ocls(*a, **kw)
        assert repr(ours) == repr(ref)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
        for (_, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
            assert torch.equal(a, b)


def test_rnn_nonlinearity_positional_and_keyword():
    assert hnrnn.nn.RNN(3, 4, 1, "relu").nonlinearity == "relu"
    assert hnrnn.nn.RNN(3, 4, nonlinearity="relu").mode == "RNN_RELU"
    assert repr(hnrnn.nn.RNN(3, 4, nonlinearity="relu")) == repr(torch.nn.RNN(3, 4, nonlinearity="relu"))
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        hnrnn.nn.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="proj_size"):
        hnrnn.nn.GRU(3, 4, proj_size=2)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_state_dict_round_trips_both_ways(kind):
    ref, ours = make_pair(kind, 3, 4, "cpu", torch.float32, num_layers=2, bidirectional=True)
    other_ref = type(ref)(3, 4, num_layers=2, bidirectional=True)
    other_ref.load_state_dict(ours.state_dict())  # hnrnn -> torch.nn
    for k, v in ours.state_dict().items():
        assert torch.equal(other_ref.state_dict()[k], v)
    fresh = type(ours)(3, 4, num_layers=2, bidirectional=True)
    fresh.load_state_dict(ref.state_dict())  # torch.nn -> hnrnn
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(fresh(x)[0], ref(x)[0], atol=1e-6, rtol=1e-5)
    clone = pickle.loads(pickle.dumps(fresh))
    torch.testing.assert_close(clone(x)[0], ref(x)[0], atol=1e-6, rtol=1e-5)


def test_seed_models_usage():
    # Model4 / Model5 of the lesson: batch_first, explicit h0 carried between batches.
    torch.manual_seed(0)
    for ref, ours, layers in [(torch.nn.RNN(64, 64, batch_first=True), hnrnn.nn.RNN(64, 64, batch_first=True), 1),
                              (torch.nn.GRU(64, 64, 2, batch_first=True), hnrnn.nn.GRU(64, 64, 2, batch_first=True), 2)]:
        ours.load_state_dict(ref.state_dict())
        h_ref = h_ours = torch.zeros(layers, 64, 64)
        for _ in range(2):
            x = torch.randn(64, 20, 64)
            r, h_ref = ref(x, h_ref)
            o, h_ours = ours(x, h_ours)
            torch.testing.assert_close(o, r, atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(h_ours, h_ref, atol=2e-5, rtol=1e-4)
            h_ref, h_ours = h_ref.detach(), h_ours.detach()


def test_lazy_top_level_exports():
    assert hnrnn.GRU is hnrnn.nn.GRU and hnrnn.RNN is hnrnn.nn.RNN
    assert not isinstance(hnrnn.nn.GRU(2, 3), (torch.nn.GRU, torch.nn.RNN))  # see hnrnn/nn/rnn.py
    assert isinstance(hnrnn.nn.GRU(2, 3), torch.nn.RNNBase)


def _error_type(mod, *args):
    try:
        mod(*args)
    except Exception as e:  # noqa: BLE001
        return type(e), str(e)
    return None, ""


@pytest.mark.parametrize("kind", ["gru", "rnn"])
@pytest.mark.parametrize("case", ["input_size", "hidden_shape", "input_dims", "hidden_dims_batched",
                                  "hidden_dims_unbatched", "dtype", "hidden_batch"])
def test_bad_inputs_raise_like_torch(kind, case):
    ref, ours = make_pair(kind, 3, 4, "cpu", torch.float32, num_layers=2)
    x, h = torch.randn(5, 2, 3), torch.randn(2, 2, 4)
    args = {
        "input_size": (torch.randn(5, 2, 7), h),
        "hidden_shape": (x, torch.randn(3, 2, 4)),
        "hidden_batch": (x, torch.randn(2, 5, 4)),
        "input_dims": (torch.randn(5, 2, 3, 1), h),
        "hidden_dims_batched": (x, torch.randn(2, 4)),
        "hidden_dims_unbatched": (torch.randn(5, 3), torch.randn(2, 1, 4)),
        "dtype": (x.double(), h.double()),
    }[case]
    want_type, want_msg = _error_type(ref, *args)
    got_type, got_msg = _error_type(ours, *args)
    assert want_type is not None and got_type is want_type, (got_type, got_msg, want_type, want_msg)
    assert got_msg.split(":")[-1].strip() == want_msg.split(":")[-1].strip()


def test_backend_choice():
    x = torch.randn(3, 2, 4)
    with pytest.raises(BackendUnavailableError, match="cuda"):
        hnrnn.nn.GRU(4, 5, backend="cuda")(x)
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        hnrnn.nn.GRU(4, 5, backend="nope")(x)
    # bfloat16 on CPU has no compiled kernel: the automatic choice falls back to the reference
    m = hnrnn.nn.GRU(4, 5).to(torch.bfloat16)
    ref = torch.nn.GRU(4, 5).to(torch.bfloat16)
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x.bfloat16())[0], ref(x.bfloat16())[0], atol=2e-2, rtol=2e-2)
