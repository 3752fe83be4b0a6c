"""The zoo cell's Triton kernels through the public entry point (backend="triton"), on CPU tensors
under TRITON_INTERPRET=1 (tests/run.sh runs this tier in its own process). Both paths of each
direction: the whole-sequence program and the per-step kernels (forced, and with several row
blocks so the block-wise BatchNorm statistics are exercised)."""
import pytest
import torch

from hnrnn.ops.zoo_cell import zoo_cell_sequence, zoo_cell_step

from zoo_cell_cases import MODES, check_backend, check_op_running_statistics, fused, make_inputs, run

pytestmark = pytest.mark.interpreter


@pytest.fixture
def kernels():
    from hnrnn.kernels import zoo_cell
    yield zoo_cell
    zoo_cell.FORCE_STEP_PATH = False
    zoo_cell.STEP_BLOCK_B = 128


@pytest.mark.parametrize("norm_state,training", MODES)
@pytest.mark.parametrize("B,T,H", [(3, 3, 7), (64, 3, 64), (5, 4, 50), (3, 2, 130),
                                   (64, 2, 7), (64, 2, 50), (64, 2, 130)])
def test_triton_matches_reference_and_seed_loop(kernels, B, T, H, norm_state, training):
    # H = 130 pads to 256 > SEQ_MAX_H: the per-step path; the others run the sequence kernel.
    # B = 64 with H not a power of two: padded feature lanes beside a full batch of rows.
    assert kernels.use_sequence_kernel(B, H) == (H <= 128)
    check_backend("triton", B, T, H, norm_state, training)


@pytest.mark.parametrize("force_step", [False, True])
@pytest.mark.parametrize("norm_state,training", MODES)
@pytest.mark.parametrize("B,T,H", [(3, 1, 7), (40, 3, 20)])
def test_triton_skip_first_linear(kernels, B, T, H, norm_state, training, force_step):
    # Model0's first step (no linear layer) on both paths; at T = 1 the weight gets no gradient
    kernels.FORCE_STEP_PATH = force_step
    kernels.STEP_BLOCK_B = 16
    check_backend("triton", B, T, H, norm_state, training, skip_first_linear=True)


@pytest.mark.parametrize("norm_state,training", MODES)
def test_triton_step_path_with_several_row_blocks(kernels, norm_state, training):
    kernels.FORCE_STEP_PATH = True
    kernels.STEP_BLOCK_B = 16
    check_backend("triton", 40, 3, 20, norm_state, training)


@pytest.mark.parametrize("force_step", [False, True])
def test_triton_batch_of_one_in_eval(kernels, force_step):
    kernels.FORCE_STEP_PATH = force_step
    check_backend("triton", 1, 3, 7, True, False)
    check_backend("triton", 1, 3, 7, False, False)


@pytest.mark.parametrize("force_step", [False, True])
def test_triton_op_running_statistics_outputs(kernels, force_step):
    from hnrnn.ops.zoo_cell import _triton_forward_op
    kernels.FORCE_STEP_PATH = force_step
    check_op_running_statistics(_triton_forward_op(), dtype=torch.float32)


def test_triton_step_entry_point():
    ids, f64 = make_inputs(6, 1, 9)
    f32 = [f.float() for f in f64]
    got = zoo_cell_step(ids[:, 0], *f32, True, True, backend="triton")
    want = zoo_cell_step(ids[:, 0], *f64, True, True, backend="reference")
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("force_step", [False, True])
def test_triton_emb_gradient_is_deterministic(kernels, force_step):
    kernels.FORCE_STEP_PATH = force_step
    ids, f64 = make_inputs(16, 5, 8, V=3)
    f32 = [f.float() for f in f64]
    a = run(fused("triton"), ids, f32, False, True)
    b = run(fused("triton"), ids, f32, False, True)
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(x, y)


def test_triton_rejects_float64_clearly():
    ids, f64 = make_inputs(3, 2, 5)
    with pytest.raises(TypeError, match="triton backend computes in float32"):
        zoo_cell_sequence(ids, *f64, True, True, backend="triton")


def test_triton_bad_ids_checked_before_the_kernel():
    ids, f64 = make_inputs(3, 2, 5, V=4)
    f32 = [f.float() for f in f64]
    with pytest.raises(IndexError, match=r"ids must be in \[0, 4\)"):
        zoo_cell_sequence(ids + 10, *f32, True, True, backend="triton")


def test_triton_op_reads_out_of_range_ids_as_nan_not_out_of_bounds():
    # The op itself (what runs under torch.compile, where the host check cannot): no stray read.
    from hnrnn.ops.zoo_cell import _triton_forward_op
    ids, f64 = make_inputs(3, 2, 5, V=4)
    f32 = [f.float() for f in f64]
    ids[1, 0] = 1000
    out = _triton_forward_op()(ids, *f32, False, False, 0.1, 1e-5)[0]
    assert torch.isnan(out[1, 0]).all() and torch.isfinite(out[0]).all()


def test_triton_opcheck_schema_and_autograd():
    # The fake-tensor parts of opcheck need a GPU: the interpreter would run the kernel on fake
    # tensors. tests/test_zoo_cell_gpu.py runs the full opcheck.
    from hnrnn.ops.zoo_cell import _triton_forward_op
    ids, f64 = make_inputs(3, 2, 5)
    f32 = [f.float().requires_grad_(i < 6) for i, f in enumerate(f64)]
    for skip in (False, True):
        torch.library.opcheck(_triton_forward_op(), (ids, *f32, True, True, 0.1, 1e-5, skip),
                              test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.parametrize("name", ["Model0", "Model1", "Model3"])
def test_zoo_models_on_triton_match_eager(name):
    # The zoo on the triton backend trains like the seed's code (float32; two training batches).
    from hnrnn.zoo import MODELS
    torch.manual_seed(0)
    eager = MODELS[name](backend="eager", hidden_size=16)
    fused_m = MODELS[name](backend="triton", hidden_size=16)
    fused_m.load_state_dict(eager.state_dict())
    T = 3 if name in ("Model0", "Model1") else 5
    for _ in range(2):
        x = torch.randint(0, 39, (8, T))
        losses = []
        for m in (eager, fused_m):
            m.zero_grad()
            loss = m(x).square().mean()
            loss.backward()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= 1e-5 * (1 + abs(losses[0]))
        for (n, a), b in zip(eager.named_parameters(), fused_m.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=lambda s: f"{n}.grad: {s}")
        for (n, a), b in zip(eager.named_buffers(), fused_m.buffers()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda s: f"buffer {n}: {s}")
