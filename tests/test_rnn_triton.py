"""The Triton GRU / RNN kernels under TRITON_INTERPRET=1 on CPU tensors, through the public
entry points (backend="triton"). Runs in its own pytest process (tests/run.sh): the
interpreter must be switched on before triton is imported. Small shapes: the interpreter is slow.
Both paths: the resident kernels (small W_hh) and the per-step path (GEMM + pointwise kernel per
step), which the sizes here reach only through the FORCE_STEP_PATH hook, except H = 130.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from hnrnn.ops import rnn as ops
from rnn_helpers import (assert_matches, assert_within_2x_torch_error, cast_module, check_module_saves_only_for_backward,
                         check_unsaved_forward, leaf, make_pair, packed_leaf, run_with_grads)

pytestmark = [pytest.mark.interpreter, pytest.mark.usefixtures("one_thread")]  # see tests/conftest.py


@pytest.fixture(params=["resident", "per-step"])
def path(request, monkeypatch):
    from hnrnn.kernels import _common
    monkeypatch.setattr(_common, "FORCE_STEP_PATH", request.param == "per-step")
    return request.param


def test_path_choice_by_weight_size():
    from hnrnn.kernels._common import resident
    assert resident(3, 64, torch.float32) and not resident(3, 65, torch.float32)
    assert resident(3, 32, torch.float64) and not resident(3, 64, torch.float64)
    assert resident(3, 128, torch.bfloat16) and resident(1, 256, torch.float16)
    assert resident(1, 128, torch.float32) and not resident(1, 129, torch.float32)

# kind, hidden, layers, bias, batch_first, bidirectional, h0, T, B, nonlinearity
GRID = [
    ("gru", 7, 2, True, True, True, True, 5, 3, None),
    ("gru", 1, 1, False, False, False, False, 3, 1, None),
    ("gru", 130, 1, True, False, False, True, 2, 17, None),  # H > 128, B > BLOCK_B: padding and masking
    ("rnn", 7, 2, True, False, True, False, 6, 2, "relu"),
    ("rnn", 20, 1, False, True, False, True, 4, 33, "tanh"),
]


@pytest.mark.parametrize("cfg", GRID, ids=lambda c: "-".join(map(str, c)))
def test_triton_float64_matches_torch_nn(cfg, path):
    kind, H, layers, bias, bf, bidir, h0_given, T, B, nl = cfg
    kw = dict(num_layers=layers, bias=bias, batch_first=bf, bidirectional=bidir)
    if nl:
        kw["nonlinearity"] = nl
    ref, ours = make_pair(kind, 3, H, "triton", torch.float64, **kw)
    D = 2 if bidir else 1
    x = torch.randn((B, T, 3) if bf else (T, B, 3), dtype=torch.float64)
    h0 = torch.randn(layers * D, B, H, dtype=torch.float64) if h0_given else None
    g_out = torch.randn((B, T, D * H) if bf else (T, B, D * H), dtype=torch.float64)
    g_h = torch.randn(layers * D, B, H, dtype=torch.float64)
    want = run_with_grads(ref, leaf(x), None if h0 is None else leaf(h0), g_out, g_h)
    got = run_with_grads(ours, leaf(x), None if h0 is None else leaf(h0), g_out, g_h)
    assert_matches(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_triton_float32_within_2x_of_torch_error(kind, path):
    ref64, _ = make_pair(kind, 16, 32, "triton", torch.float64, num_layers=2, batch_first=True)
    ref32 = cast_module(ref64, torch.float32)
    ours = cast_module(_, torch.float32)
    x = torch.randn(8, 12, 16, dtype=torch.float64)
    h0 = torch.randn(2, 8, 32, dtype=torch.float64)
    g_out, g_h = torch.randn(8, 12, 32, dtype=torch.float64), torch.randn(2, 8, 32, dtype=torch.float64)
    truth = run_with_grads(ref64, leaf(x), leaf(h0), g_out, g_h)
    theirs = run_with_grads(ref32, leaf(x.float()), leaf(h0.float()), g_out.float(), g_h.float())
    got = run_with_grads(ours, leaf(x.float()), leaf(h0.float()), g_out.float(), g_h.float())
    assert_within_2x_torch_error(got, theirs, truth)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_triton_bfloat16_per_step_within_2x_of_torch_error(kind, monkeypatch):
    # 16-bit on the per-step path (it has no tl.dot, which the interpreter gets wrong in bf16:
    # triton#11584; the resident 16-bit kernels are checked on the GPU tier)
    from hnrnn.kernels import _common
    monkeypatch.setattr(_common, "FORCE_STEP_PATH", True)
    ref64, ours64 = make_pair(kind, 16, 24, "triton", torch.float64, num_layers=2, bidirectional=True)
    x, h0 = torch.randn(6, 5, 16, dtype=torch.float64), torch.randn(4, 5, 24, dtype=torch.float64)
    g_out, g_h = torch.randn(6, 5, 48, dtype=torch.float64), torch.randn(4, 5, 24, dtype=torch.float64)
    truth = run_with_grads(ref64, leaf(x), leaf(h0), g_out, g_h)
    ref16, ours16 = cast_module(ref64, torch.bfloat16), cast_module(ours64, torch.bfloat16)
    c = lambda t: leaf(t.to(torch.bfloat16))  # noqa: E731
    theirs = run_with_grads(ref16, c(x), c(h0), g_out.bfloat16(), g_h.bfloat16())
    got = run_with_grads(ours16, c(x), c(h0), g_out.bfloat16(), g_h.bfloat16())
    assert_within_2x_torch_error(got, theirs, truth, floor=1e-2)


@pytest.mark.parametrize("kind", ["gru", "rnn_tanh"])
@pytest.mark.parametrize("T,B,H", [(3, 0, 4), (3, 2, 0), (0, 2, 4)])
def test_triton_zero_sizes(kind, T, B, H, path):
    G = 3 if kind == "gru" else 1
    gx = torch.randn(T, B, G * H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    w = torch.randn(G * H, H, dtype=torch.float64, requires_grad=True)
    b = torch.randn(G * H, dtype=torch.float64, requires_grad=True)

    def run(backend):
        args = (gx, h0, w, b) if kind == "gru" else (gx, h0, w, b, "tanh")
        op = ops.gru_recurrence if kind == "gru" else ops.rnn_recurrence
        out, h = op(*args, False, None, backend)
        loss = out.sum() + 2 * h.sum()
        return [out, h, *torch.autograd.grad(loss, (gx, h0, w, b), allow_unused=True, materialize_grads=True)]
    torch.testing.assert_close(run("triton"), run("reference"))


def test_triton_packed_sequence_unsorted(path):
    ref, ours = make_pair("gru", 3, 5, "triton", num_layers=1, bidirectional=True)
    packed = pack_sequence([torch.randn(n, 3, dtype=torch.float64) for n in (2, 5, 1, 4)], enforce_sorted=False)
    g_out = torch.randn(packed.data.shape[0], 10, dtype=torch.float64)
    g_h = torch.randn(2, 4, 5, dtype=torch.float64)
    h0 = torch.randn(2, 4, 5, dtype=torch.float64)
    want = run_with_grads(ref, packed_leaf(packed), leaf(h0), g_out, g_h)
    got = run_with_grads(ours, packed_leaf(packed), leaf(h0), g_out, g_h)
    assert_matches(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kind,reverse,lengths", [("gru", False, None), ("gru", True, [3, 1]),
                                                  ("rnn_tanh", True, None), ("rnn_relu", False, [1, 3])])
def test_triton_gradcheck(kind, reverse, lengths, path):
    G = 3 if kind == "gru" else 1
    H = 3
    gx = torch.randn(3, 2, G * H, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, H, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(G * H, H, dtype=torch.float64) / 2).requires_grad_()
    b = torch.randn(G * H, dtype=torch.float64, requires_grad=True)
    lens = None if lengths is None else torch.tensor(lengths)
    if kind == "gru":
        f = lambda gx, h0, w, b: ops.gru_recurrence(gx, h0, w, b, reverse, lens, "triton")  # noqa: E731
    else:
        f = lambda gx, h0, w, b: ops.rnn_recurrence(gx, h0, w, b, kind[4:], reverse, lens, "triton")  # noqa: E731
    assert torch.autograd.gradcheck(f, (gx, h0, w, b))


def test_triton_ops_match_compiled_workspace(path):
    # every backend writes the same workspace layout, so backward ops are interchangeable
    gx, h0 = torch.randn(4, 3, 15, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    w, b = torch.randn(15, 5, dtype=torch.float64), torch.randn(15, dtype=torch.float64)
    lens = torch.tensor([4, 2, 3])
    tri = ops.triton_ops()[0](gx, h0, w, b, True, lens)
    cpu = torch.ops.hnrnn.gru_recurrence(gx, h0, w, b, True, lens)
    assert_matches(list(tri), list(cpu), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("reverse,lengths", [(False, None), (True, [4, 1, 3])])
def test_forward_without_save_writes_no_workspace(path, kind, reverse, lengths):
    gru_fwd, _, rnn_fwd, _ = ops.triton_ops()
    op = gru_fwd if kind == "gru" else (lambda gx, h0, w, b, reverse, lens, save: rnn_fwd(
        gx, h0, w, b, kind == "rnn_relu", reverse, lens, save))
    check_unsaved_forward(op, kind, reverse, lengths)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_module_saves_workspace_only_for_backward(path, kind):
    _, ours = make_pair(kind, 3, 5, "triton", num_layers=2, bidirectional=True)
    check_module_saves_only_for_backward(ours, torch.randn(4, 2, 3, dtype=torch.float64))


def test_triton_opcheck():
    # test_faketensor is left to the GPU tier: under the interpreter the fake-mode trace of a
    # triton_op tries to attach CPU storage to meta tensors (an interpreter limitation)
    gx, h0 = torch.randn(3, 2, 12, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    w, b = torch.randn(12, 4, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    gru_fwd, _, rnn_fwd, _ = ops.triton_ops()
    torch.library.opcheck(gru_fwd, (gx.requires_grad_(), h0, w, b, False, None),
                          test_utils=("test_schema", "test_autograd_registration"))
    torch.library.opcheck(rnn_fwd, (gx[..., :4].contiguous(), h0, w[:4], None, True, True, torch.tensor([1, 3])),
                          test_utils=("test_schema", "test_autograd_registration"))
