"""The zoo cell's CPU kernels (hnrnn._C) against hnrnn.reference and against the lesson's own loop
(nn.Embedding / nn.Linear / nn.BatchNorm1d called per step), plus gradcheck, opcheck,
torch.compile, the single-step op, determinism and bad inputs."""
import itertools

import pytest
import torch

from hnrnn import reference
from hnrnn.ops import _backend
from hnrnn.ops.zoo_cell import zoo_cell_sequence, zoo_cell_step

from zoo_cell_cases import (MODES, assert_all_close, check_backend, check_op_running_statistics, fused, make_inputs,
                             reference_fn, run, seed_loop)

needs_cpu_ext = pytest.mark.skipif(_backend.unavailable_reason("cpu", torch.device("cpu")) is not None,
                                   reason="hnrnn._C is not built")

# (B, T, H): hidden sizes that are not powers of two, T = 1, the lesson's shapes (64, 3 / 20, 64).
SHAPES = [(3, 1, 7), (3, 3, 50), (64, 3, 64), (64, 20, 64), (3, 20, 130), (64, 20, 7)]
EVAL_ONLY = [(1, 3, 7), (1, 20, 130)]  # batch size 1 cannot train a BatchNorm


@needs_cpu_ext
@pytest.mark.parametrize("norm_state,training", MODES)
@pytest.mark.parametrize("B,T,H", SHAPES)
def test_cpu_matches_reference_and_seed_loop(B, T, H, norm_state, training):
    check_backend("cpu", B, T, H, norm_state, training)


@needs_cpu_ext
@pytest.mark.parametrize("norm_state,training", MODES)
@pytest.mark.parametrize("B,T,H", [(3, 1, 7), (3, 3, 50), (64, 3, 64), (16, 20, 130)])
def test_cpu_skip_first_linear_matches_reference_and_seed_loop(B, T, H, norm_state, training):
    # Model0's first step (no linear layer); at T = 1 the weight and bias get zero gradients. (Not
    # B = 3 at T = 20: with ReLU(h0 + E) at step 0, features of zero batch variance make the
    # state-normalised gradients too ill-conditioned for float64 tolerances, the two torch
    # implementations themselves differing by 5e-10 of the gradient's scale.)
    check_backend("cpu", B, T, H, norm_state, training, skip_first_linear=True)


@needs_cpu_ext
@pytest.mark.parametrize("norm_state", [True, False])
@pytest.mark.parametrize("B,T,H", EVAL_ONLY)
def test_cpu_batch_of_one_in_eval(B, T, H, norm_state):
    check_backend("cpu", B, T, H, norm_state, training=False)


@needs_cpu_ext
@pytest.mark.parametrize("norm_state,training", MODES)
def test_cpu_kernels_split_batch_across_threads(norm_state, training):
    # B = 37: three 16-row blocks, split 1 + 2 between two threads, which meet at barriers for
    # the batch statistics; per-block partial sums added in block order give the same bits on
    # any thread count
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            check_backend("cpu", 37, 5, 40, norm_state, training)
            ids, f32 = make_inputs(37, 5, 40, dtype=torch.float32)
            results.append(run(fused("cpu"), ids, f32, norm_state, training))
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        assert torch.equal(x, y)


def test_reference_matches_seed_loop():
    # The ground truth itself against the lesson's modules (float64, both placements and modes).
    for (norm_state, training), skip in itertools.product(MODES, (False, True)):
        ids, f64 = make_inputs(5, 4, 9)
        assert_all_close(run(reference_fn, ids, f64, norm_state, training, skip_first_linear=skip),
                         seed_loop(ids, f64, norm_state, training, skip_first_linear=skip), rtol=1e-10, atol=1e-12)


@needs_cpu_ext
@pytest.mark.parametrize("skip_first_linear", [False, True])
@pytest.mark.parametrize("norm_state,training", MODES)
def test_gradcheck_float64(norm_state, training, skip_first_linear):
    ids, f64 = make_inputs(3, 3, 5, V=4)
    inputs = [f.clone().requires_grad_(i < 6) for i, f in enumerate(f64)]

    def fn(*diff):
        out, h, _, _ = zoo_cell_sequence(ids, *diff, *inputs[6:], norm_state, training, backend="cpu",
                                         skip_first_linear=skip_first_linear)
        return out, h

    assert torch.autograd.gradcheck(fn, inputs[:6], eps=1e-6, atol=1e-6)


@needs_cpu_ext
@pytest.mark.parametrize("skip_first_linear", [False, True])
@pytest.mark.parametrize("norm_state,training", MODES)
def test_gradcheck_registered_autograd_of_the_op(norm_state, training, skip_first_linear):
    # The op called directly, past the Python entry point's validation and casts: its C++
    # autograd as torch.compile and callers of torch.ops.hnrnn see it.
    ids, f64 = make_inputs(3, 3, 5, V=4)
    inputs = [f.clone().requires_grad_(i < 6) for i, f in enumerate(f64)]

    def fn(*diff):
        res = torch.ops.hnrnn.zoo_cell_forward(ids, *diff, *inputs[6:], norm_state, training, 0.1, 1e-5,
                                               skip_first_linear)
        return res[0], res[1]

    assert torch.autograd.gradcheck(fn, inputs[:6], eps=1e-6, atol=1e-6)


@needs_cpu_ext
def test_op_running_statistics_outputs():
    check_op_running_statistics(torch.ops.hnrnn.zoo_cell_forward.default)


@needs_cpu_ext
def test_running_statistics_and_eval_identity():
    ids, f64 = make_inputs(4, 5, 6)
    _, _, rm, rv = zoo_cell_sequence(ids, *f64, True, True, momentum=0.3, eps=1e-3, backend="cpu")
    _, _, rm_ref, rv_ref = reference.zoo_cell_sequence(ids, *f64, True, True, 0.3, 1e-3)
    torch.testing.assert_close(rm, rm_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, rv_ref, rtol=1e-12, atol=1e-12)
    assert rm.data_ptr() != f64[6].data_ptr(), "training must not update the inputs in place"
    before = [f64[6].clone(), f64[7].clone()]
    _, _, rm_e, rv_e = zoo_cell_sequence(ids, *f64, True, False, backend="cpu")
    assert rm_e is f64[6] and rv_e is f64[7]
    torch.testing.assert_close(f64[6], before[0], rtol=0, atol=0)
    torch.testing.assert_close(f64[7], before[1], rtol=0, atol=0)


@needs_cpu_ext
@pytest.mark.parametrize("norm_state,training", MODES)
def test_step_matches_reference(norm_state, training):
    ids, f64 = make_inputs(4, 1, 10)
    ids = ids[:, 0]

    def step(backend):
        leaves = [f.clone().requires_grad_(i < 6) for i, f in enumerate(f64)]
        if backend == "reference":
            res = reference.zoo_cell_step(ids, *leaves, norm_state, training)
        else:
            res = zoo_cell_step(ids, *leaves, norm_state, training, backend=backend)
        (res[0].sin().sum() + res[1].cos().sum()).backward()
        return list(res), [l.grad for l in leaves[:6]]

    got, want = step("cpu"), step("reference")
    assert got[0][0].shape == (4, 10)
    assert_all_close(got, want, rtol=1e-9, atol=1e-10, what="step")
    # The compiled step op directly (composite of the sequence op).
    direct = torch.ops.hnrnn.zoo_cell_step(ids, *f64, norm_state, training, 0.1, 1e-5)
    assert_all_close(list(direct), [w.detach() for w in want[0]], rtol=1e-9, atol=1e-10, what="step op")


@needs_cpu_ext
def test_emb_gradient_is_deterministic_and_repeated_ids_accumulate():
    ids, f64 = make_inputs(64, 20, 64, V=3)  # few rows: each is hit hundreds of times
    f32 = [f.float() for f in f64]
    a = run(fused("cpu"), ids, f32, False, True)
    b = run(fused("cpu"), ids, f32, False, True)
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(x, y)
    unused = make_inputs(3, 2, 5, V=7)
    ids2, f = unused
    ids2 = torch.zeros_like(ids2)  # only row 0 used: the others get exactly zero gradient
    _, grads = run(fused("cpu"), ids2, f, True, True)
    assert torch.count_nonzero(grads[1][1:]) == 0 and torch.count_nonzero(grads[1][0]) > 0


@needs_cpu_ext
def test_non_contiguous_and_int32_inputs():
    ids, f64 = make_inputs(4, 6, 8)
    want = run(fused("cpu"), ids, f64, True, True)
    ids_nc = torch.stack([ids, ids], 2).to(torch.int32)[..., 0]  # strided and int32
    w_nc = f64[2].t().contiguous().t()  # transposed storage
    h_nc = torch.stack([f64[0], f64[0]], 2)[..., 0]
    assert not (ids_nc.is_contiguous() or w_nc.is_contiguous() or h_nc.is_contiguous())
    got = run(fused("cpu"), ids_nc, [h_nc, f64[1], w_nc] + f64[3:], True, True)
    assert_all_close(got, want, rtol=0, atol=0, what="non-contiguous")


@needs_cpu_ext
def test_opcheck():
    ids, f64 = make_inputs(3, 4, 5)
    f32 = [f.float() for f in f64]
    for floats in (f64, f32):
        for (norm_state, training), skip in itertools.product(MODES, (False, True)):
            args = (ids, *[f.clone().requires_grad_(i < 6) for i, f in enumerate(floats)], norm_state, training,
                    0.1, 1e-5, skip)
            torch.library.opcheck(torch.ops.hnrnn.zoo_cell_forward.default, args)
    for skip in (False, True):
        out = torch.ops.hnrnn.zoo_cell_forward(ids, *f64, True, True, 0.1, 1e-5, skip)
        bwd_args = (torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64), ids, 11,
                    f64[2], f64[4], out[4], out[5], out[6], out[7], True, True, skip)
        torch.library.opcheck(torch.ops.hnrnn.zoo_cell_backward.default, bwd_args)
    torch.library.opcheck(torch.ops.hnrnn.zoo_cell_step.default,
                          (ids[:, 0], *[f.clone().requires_grad_(i < 6) for i, f in enumerate(f64)], False, True,
                           0.1, 1e-5))


@needs_cpu_ext
@pytest.mark.parametrize("norm_state,compile_backend,skip",
                         [(True, "inductor", False), (False, "aot_eager", False), (True, "aot_eager", True)])
def test_torch_compile_fullgraph(norm_state, compile_backend, skip):
    torch._dynamo.reset()
    ids, f64 = make_inputs(5, 4, 6)

    @torch.compile(fullgraph=True, backend=compile_backend)
    def loss_fn(ids, *floats):
        out, h, rm, rv = zoo_cell_sequence(ids, *floats, norm_state, True, backend="cpu", skip_first_linear=skip)
        return (out.square().sum() + h.sum()), rm, rv

    def grads(fn):
        leaves = [f.clone().requires_grad_(i < 6) for i, f in enumerate(f64)]
        loss, rm, rv = fn(ids, *leaves)
        loss.backward()
        return [loss, rm, rv] + [l.grad for l in leaves[:6]]

    def eager(ids, *floats):
        out, h, rm, rv = zoo_cell_sequence(ids, *floats, norm_state, True, backend="cpu", skip_first_linear=skip)
        return (out.square().sum() + h.sum()), rm, rv

    for a, b in zip(grads(loss_fn), grads(eager)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Bad input: each raises before any kernel runs, with a message naming the problem.
# ---------------------------------------------------------------------------------------------

def _bad(**changes):
    ids, f = make_inputs(4, 3, 6, V=5)
    args = dict(ids=ids, h0=f[0], emb=f[1], weight=f[2], bias=f[3], bn_weight=f[4], bn_bias=f[5],
                running_mean=f[6], running_var=f[7], norm_state=True, training=True)
    args.update({k: (v(args) if callable(v) else v) for k, v in changes.items()})
    return args


BAD = [
    ("ids_too_big", dict(ids=lambda a: a["ids"].clone().fill_(5)), IndexError, r"ids must be in \[0, 5\).*5"),
    ("ids_negative", dict(ids=lambda a: a["ids"].clone().fill_(-1)), IndexError, r"ids must be in \[0, 5\).*-1"),
    ("ids_float", dict(ids=lambda a: a["ids"].double()), RuntimeError, "ids must be int64 or int32"),
    ("ids_1d", dict(ids=lambda a: a["ids"][:, 0]), ValueError, r"ids must be \(B, T\)"),
    ("ids_no_steps", dict(ids=lambda a: a["ids"][:, :0]), ValueError, "T >= 1"),
    ("h0_batch", dict(h0=lambda a: a["h0"][:3]), ValueError, r"h0 must be \(B, H\) with B = 4"),
    ("emb_width", dict(emb=lambda a: a["emb"][:, :5]), ValueError, r"emb must be \(V, H\) with H = 6"),
    ("weight_shape", dict(weight=lambda a: a["weight"][:, :5]), ValueError, r"weight must be \(H, H\)"),
    ("bias_shape", dict(bias=lambda a: a["bias"][:5]), ValueError, r"bias must be \(H,\)"),
    ("bn_weight_shape", dict(bn_weight=lambda a: a["bn_weight"][:5]), ValueError, r"bn_weight must be \(H,\)"),
    ("running_var_shape", dict(running_var=lambda a: a["running_var"][None]), ValueError,
     r"running_var must be \(H,\)"),
    ("dtype_mismatch", dict(weight=lambda a: a["weight"].float()), TypeError, "weight has dtype torch.float32"),
    ("int_state", dict(h0=lambda a: a["h0"].long()), TypeError, "h0 must be a floating point tensor"),
    ("not_a_tensor", dict(emb=[[0.0] * 6] * 5), TypeError, "emb must be a torch.Tensor"),
    ("device_mismatch", dict(bias=lambda a: a["bias"].to("meta")), RuntimeError, "bias is on meta"),
    ("batch_of_one_training", dict(ids=lambda a: a["ids"][:1], h0=lambda a: a["h0"][:1]), ValueError,
     r"Expected more than 1 value per channel when training, got input size torch.Size\(\[1, 6\]\)"),
    ("momentum_none", dict(momentum=None), TypeError, "momentum=None"),
]


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpu_ext), "reference"])
@pytest.mark.parametrize("name,changes,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input(backend, name, changes, exc, match):
    with pytest.raises(exc, match=match):
        zoo_cell_sequence(**_bad(**changes), backend=backend)


def test_batch_of_one_error_is_batchnorm1ds():
    with pytest.raises(ValueError) as ours:
        zoo_cell_sequence(**_bad(ids=lambda a: a["ids"][:1], h0=lambda a: a["h0"][:1]), backend="reference")
    with pytest.raises(ValueError) as torchs:
        torch.nn.BatchNorm1d(6).train()(torch.randn(1, 6))
    assert str(ours.value) == str(torchs.value)


@needs_cpu_ext
def test_compiled_op_rejects_bad_input_itself():
    # Called directly (no Python validation), the kernel still refuses with a clear error.
    a = _bad()
    floats = [a[k] for k in ("h0", "emb", "weight", "bias", "bn_weight", "bn_bias", "running_mean", "running_var")]
    with pytest.raises(IndexError, match=r"ids must be in \[0, 5\).*found 7"):
        torch.ops.hnrnn.zoo_cell_forward(a["ids"].clone().fill_(7), *floats, True, True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="weight must be contiguous"):
        torch.ops.hnrnn.zoo_cell_forward(a["ids"], floats[0], floats[1], floats[2].t(), *floats[3:], True, True,
                                         0.1, 1e-5)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.ops.hnrnn.zoo_cell_forward(a["ids"][:1].contiguous(), floats[0][:1], *floats[1:], True, True, 0.1,
                                         1e-5)


def test_step_bad_input():
    ids, f = make_inputs(4, 3, 6, V=5)
    with pytest.raises(ValueError, match=r"ids must be \(B,\)"):
        zoo_cell_step(ids, *f, True, True, backend="reference")


@needs_cpu_ext
@pytest.mark.parametrize("name,T", [("Model0", 3), ("Model1", 3), ("Model2", 20), ("Model3", 20),
                                    ("Model0", 1), ("Model0", 2), ("Model0", 5)])
def test_zoo_models_on_the_fused_cell_match_eager(name, T):
    # hnrnn.zoo calls zoo_cell_sequence: the fused models must train like the seed's code, running
    # statistics and carried state included (two training batches, then an eval batch).
    from hnrnn.zoo import MODELS
    torch.manual_seed(0)
    eager = MODELS[name](backend="eager").double()
    fused_m = MODELS[name](backend="cpu").double()
    fused_m.load_state_dict(eager.state_dict())
    for step, training in enumerate((True, True, False)):
        x = torch.randint(0, 39, (64, T))
        outs = []
        for m in (eager, fused_m):
            m.train(training)
            m.zero_grad()
            out = m(x)
            if training:
                out.square().mean().backward()
            outs.append(out.detach())
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-10, msg=lambda s: f"step {step}: {s}")
        for (n, a), b in zip(eager.named_parameters(), fused_m.parameters()):
            if training:
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-8, atol=1e-10, msg=lambda s: f"{n}.grad: {s}")
        for (n, a), b in zip(eager.named_buffers(), fused_m.buffers()):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=lambda s: f"buffer {n}: {s}")
