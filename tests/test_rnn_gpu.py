"""GRU / RNN on CUDA tensors with the cuda and triton backends (run with -m gpu on a GPU machine).

Float64 is compared tightly with torch.nn; float32 (TF32 off) and bfloat16 must be within 2x
of torch.nn's own error against a float64 truth. Hidden sizes cover the persistent / resident
paths (W_hh on chip), on the cuda backend the grid path (H = 256, 512 at small batches: W_hh in
slices over the SMs of one cooperative launch; H = 130 in float64) and the per-step path (H = 1024
at B = 128), and on the triton backend the per-step path (H = 256, 512, 1024; also H = 100 and 130
in float32 and float64, while H = 100 in 16-bit is its largest resident GRU,
kernels/_common.RESIDENT_MAX_BLOCK_H). Unidirectional stacks whose weights fit one SM run as one
wavefront launch on the cuda backend (the 2-layer GRU at H = 64 in 32 and 16 bits, the 3-layer RNN
at H = 33 in every dtype)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from rnn_helpers import (assert_matches, assert_within_2x_torch_error, cast_module, check_module_saves_only_for_backward,
                         leaf, make_pair, packed_leaf, run_with_grads)

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_tf32")]  # see tests/conftest.py


def _case(kind, I, H, layers, bidir, bf, T, B, dtype, backend, nl=None):
    kw = dict(num_layers=layers, bidirectional=bidir, batch_first=bf)
    if nl:
        kw["nonlinearity"] = nl
    ref64, _ = make_pair(kind, I, H, backend, torch.float64, device="cuda", **kw)
    D = 2 if bidir else 1
    x = torch.randn((B, T, I) if bf else (T, B, I), dtype=torch.float64, device="cuda")
    h0 = torch.randn(layers * D, B, H, dtype=torch.float64, device="cuda")
    g_out = torch.randn((B, T, D * H) if bf else (T, B, D * H), dtype=torch.float64, device="cuda")
    g_h = torch.randn(layers * D, B, H, dtype=torch.float64, device="cuda")
    return ref64, _, x, h0, g_out, g_h


CASES = [("gru", 64, 2, False, True, 20, 64, None), ("rnn", 64, 1, False, True, 20, 64, "tanh"),
         ("gru", 7, 3, True, False, 33, 5, None), ("gru", 130, 1, True, False, 9, 17, None),
         ("gru", 256, 1, False, True, 5, 8, None), ("rnn", 512, 2, True, False, 4, 3, "relu"),
         ("rnn", 1, 1, False, False, 3, 1, "relu"), ("gru", 100, 1, False, True, 9, 40, None),
         ("rnn", 33, 3, False, False, 12, 19, "relu"), ("gru", 1024, 1, False, False, 3, 128, None)]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_float64_matches_torch_nn(case, backend):
    kind, H, layers, bidir, bf, T, B, nl = case
    ref, ours, x, h0, g_out, g_h = _case(kind, 5, H, layers, bidir, bf, T, B, torch.float64, backend, nl)
    assert_matches(run_with_grads(ours, leaf(x), leaf(h0), g_out, g_h),
                   run_with_grads(ref, leaf(x), leaf(h0), g_out, g_h), atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("path", ["persistent", "grid", "step"])
def test_gpu_cuda_each_path_matches_torch_nn(path, monkeypatch):
    """Each path of the cuda backend forced (HNRNN_CUDA_RECURRENCE_PATH) at one shape that all can
    run: the grid path on 64 blocks of one unit each, where the automatic choice is persistent."""
    monkeypatch.setenv("HNRNN_CUDA_RECURRENCE_PATH", path)
    ref, ours, x, h0, g_out, g_h = _case("gru", 5, 64, 2, True, False, 9, 19, torch.float64, "cuda")
    assert_matches(run_with_grads(ours, leaf(x), leaf(h0), g_out, g_h),
                   run_with_grads(ref, leaf(x), leaf(h0), g_out, g_h), atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", CASES[:2] + CASES[3:5] + CASES[7:], ids=lambda c: "-".join(map(str, c)))
def test_gpu_low_precision_within_2x_of_torch_error(case, backend, dtype):
    kind, H, layers, bidir, bf, T, B, nl = case
    ref64, ours64, x, h0, g_out, g_h = _case(kind, 16, H, layers, bidir, bf, T, B, torch.float64, backend, nl)
    ref_lp, ours_lp = cast_module(ref64, dtype), cast_module(ours64, dtype)
    truth = run_with_grads(ref64, leaf(x), leaf(h0), g_out, g_h)
    c = lambda t: leaf(t.to(dtype))  # noqa: E731
    theirs = run_with_grads(ref_lp, c(x), c(h0), g_out.to(dtype), g_h.to(dtype))
    got = run_with_grads(ours_lp, c(x), c(h0), g_out.to(dtype), g_h.to(dtype))
    assert_within_2x_torch_error(got, theirs, truth, floor=1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_packed_unsorted(backend):
    ref, ours = make_pair("gru", 3, 9, backend, torch.float64, device="cuda", num_layers=2, bidirectional=True)
    packed = pack_sequence([torch.randn(n, 3, dtype=torch.float64, device="cuda") for n in (3, 8, 1, 8, 5)],
                           enforce_sorted=False)
    g_out = torch.randn(packed.data.shape[0], 18, dtype=torch.float64, device="cuda")
    g_h = torch.randn(4, 5, 9, dtype=torch.float64, device="cuda")
    h0 = torch.randn(4, 5, 9, dtype=torch.float64, device="cuda")
    assert_matches(run_with_grads(ours, packed_leaf(packed), leaf(h0), g_out, g_h),
                   run_with_grads(ref, packed_leaf(packed), leaf(h0), g_out, g_h), atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_gpu_torch_compile_fullgraph(backend, kind):
    torch._dynamo.reset()
    ref, ours = make_pair(kind, 8, 32, backend, torch.float32, device="cuda", num_layers=2, batch_first=True)
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(4, 7, 8, device="cuda")
    h0 = torch.randn(2, 4, 32, device="cuda")
    g_out, g_h = torch.randn(4, 7, 32, device="cuda"), torch.randn(2, 4, 32, device="cuda")
    assert_matches(run_with_grads(compiled, leaf(x), leaf(h0), g_out, g_h),
                   run_with_grads(ref, leaf(x), leaf(h0), g_out, g_h), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("kind,H,layers,bidir,path", [
    ("gru", 64, 2, False, "auto"),        # the seed's Model5: the cuda backend's wavefront
    ("rnn", 33, 1, True, "persistent"),
    ("gru", 64, 1, False, "grid"),
    ("gru", 1024, 1, False, "auto"),      # the per-step paths
])
def test_gpu_saves_workspace_only_for_backward(backend, kind, H, layers, bidir, path, monkeypatch):
    """Under no_grad / inference_mode the kernels write no workspace, with the same output and
    state, bit for bit, on every path."""
    if path != "auto":
        monkeypatch.setenv("HNRNN_CUDA_RECURRENCE_PATH", path)
    _, ours = make_pair(kind, 5, H, backend, torch.float32, device="cuda", num_layers=layers, bidirectional=bidir)
    check_module_saves_only_for_backward(ours, torch.randn(7, 9, 5, device="cuda"))


def test_gpu_opcheck():
    from hnrnn.ops import rnn as ops
    d = dict(device="cuda", dtype=torch.float32)
    for H in (8, 300):  # persistent and per-step paths
        gx, h0 = torch.randn(3, 2, 3 * H, **d, requires_grad=True), torch.randn(2, H, **d)
        w, b = torch.randn(3 * H, H, **d) / H ** 0.5, torch.randn(3 * H, **d)
        torch.library.opcheck(torch.ops.hnrnn.gru_recurrence.default, (gx, h0, w, b, True, torch.tensor([3, 1], device="cuda")))
        torch.library.opcheck(torch.ops.hnrnn.rnn_recurrence.default, (gx[..., :H].detach().contiguous(), h0, w[:H], None, False, False, None))
    gx, h0 = torch.randn(3, 2, 24, **d), torch.randn(2, 8, **d)
    w, b = torch.randn(24, 8, **d), torch.randn(24, **d)
    torch.library.opcheck(ops.triton_ops()[0], (gx, h0, w, b, False, None))


def test_gpu_deterministic():
    _, ours = make_pair("gru", 16, 64, "cuda", torch.float32, device="cuda", num_layers=2)
    x = torch.randn(20, 64, 16, device="cuda", requires_grad=True)
    grads = []
    for _ in range(2):
        ours.zero_grad()
        out, h = ours(x)
        (out.sum() + h.sum()).backward()
        grads.append([p.grad.clone() for p in ours.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
