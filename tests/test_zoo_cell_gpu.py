"""The zoo cell on CUDA tensors with every backend (`pytest -m gpu`): cuda (hnrnn._C) and triton
against the reference, both paths of each (one persistent program / per-step kernels), float64
for the CUDA kernels, opcheck, torch.compile, determinism, bad ids."""
import pytest
import torch

from hnrnn.ops import _backend
from hnrnn.ops.zoo_cell import zoo_cell_sequence

from zoo_cell_cases import MODES, check_backend, check_op_running_statistics, fused, make_inputs, run

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_tf32")]  # see tests/conftest.py

# H = 300 and (256, 20, 130)/(600, ...) leave the one-program paths: per-step kernels.
SHAPES = [(3, 1, 7), (3, 20, 50), (64, 3, 64), (64, 20, 64), (64, 20, 130), (256, 5, 300), (600, 3, 40)]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("norm_state,training", MODES)
@pytest.mark.parametrize("B,T,H", SHAPES)
def test_gpu_backends_match_reference(backend, B, T, H, norm_state, training):
    if _backend.unavailable_reason(backend, torch.device("cuda")):
        pytest.skip(_backend.unavailable_reason(backend, torch.device("cuda")))
    check_backend(backend, B, T, H, norm_state, training, device="cuda")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("norm_state,training", MODES)
@pytest.mark.parametrize("B,T,H", [(3, 1, 7), (64, 3, 64), (256, 5, 300)])  # persistent and per-step paths
def test_gpu_skip_first_linear(backend, B, T, H, norm_state, training):
    check_backend(backend, B, T, H, norm_state, training, device="cuda", skip_first_linear=True)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_batch_of_one_in_eval(backend):
    for norm_state in (True, False):
        check_backend(backend, 1, 4, 9, norm_state, False, device="cuda")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_deterministic(backend):
    ids, f64 = make_inputs(64, 20, 64, V=3, device="cuda")
    f32 = [f.float() for f in f64]
    a = run(fused(backend), ids, f32, True, True)
    b = run(fused(backend), ids, f32, True, True)
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(x, y)


@pytest.mark.parametrize("H", [9, 300])  # one-program / persistent and per-step paths
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_op_running_statistics_outputs(backend, H):
    from hnrnn.ops.zoo_cell import _triton_forward_op
    op = _triton_forward_op() if backend == "triton" else torch.ops.hnrnn.zoo_cell_forward.default
    check_op_running_statistics(op, device="cuda", dtype=torch.float32, H=H)


def test_gpu_opcheck():
    from hnrnn.ops.zoo_cell import _triton_forward_op
    ids, f64 = make_inputs(5, 3, 20, device="cuda")
    f32 = [f.float().requires_grad_(i < 6) for i, f in enumerate(f64)]
    for (norm_state, training), skip in [(mode, False) for mode in MODES] + [(MODES[0], True)]:
        args = (ids, *f32, norm_state, training, 0.1, 1e-5, skip)
        torch.library.opcheck(torch.ops.hnrnn.zoo_cell_forward.default, args)
        torch.library.opcheck(_triton_forward_op(), args)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    ids, f64 = make_inputs(8, 5, 16, device="cuda")
    f32 = [f.float() for f in f64]

    def loss_fn(ids, *floats):
        out, h, rm, rv = zoo_cell_sequence(ids, *floats, False, True, backend=backend)
        return out.square().sum() + h.sum(), rm, rv

    compiled = torch.compile(loss_fn, fullgraph=True)
    res = []
    for fn in (compiled, loss_fn):
        leaves = [f.clone().requires_grad_(i < 6) for i, f in enumerate(f32)]
        loss, rm, rv = fn(ids, *leaves)
        loss.backward()
        res.append([loss, rm, rv] + [l.grad for l in leaves[:6]])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_gpu_bad_ids_raise_without_poisoning_the_context(backend):
    ids, f64 = make_inputs(4, 3, 8, V=5, device="cuda")
    f32 = [f.float() for f in f64]
    with pytest.raises(IndexError, match=r"ids must be in \[0, 5\)"):
        zoo_cell_sequence(ids + 5, *f32, True, True, backend=backend)
    with pytest.raises(IndexError, match=r"ids must be in \[0, 5\)"):
        zoo_cell_sequence(ids - 5, *f32, True, True, backend=backend)
    out = zoo_cell_sequence(ids, *f32, True, True, backend=backend)[0]  # the context still works
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()


def test_gpu_cuda_op_reads_out_of_range_ids_as_nan():
    ids, f64 = make_inputs(3, 2, 8, V=4, device="cuda")
    f32 = [f.float() for f in f64]
    ids[1, 0] = 1000
    for H in (8,):
        out = torch.ops.hnrnn.zoo_cell_forward(ids, *f32, False, False, 0.1, 1e-5)[0]
        torch.cuda.synchronize()
        assert torch.isnan(out[1, 0]).all() and torch.isfinite(out[0]).all()
