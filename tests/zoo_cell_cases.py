"""Shared by the zoo-cell tests: inputs, the seed's plain PyTorch loop, and comparisons."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from hnrnn import reference
from hnrnn.ops.zoo_cell import zoo_cell_sequence, zoo_cell_step

MODES = [(ns, tr) for ns in (True, False) for tr in (True, False)]  # (norm_state, training)
PARAMS = ("h0", "emb", "weight", "bias", "bn_weight", "bn_bias")


def make_inputs(B, T, H, V=11, dtype=torch.float64, seed=0, device="cpu"):
    """ids (B, T) and the float inputs in zoo_cell_sequence's order (float64 on the CPU, cast later)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    ids = torch.randint(0, V, (B, T), generator=g)
    floats = [r(B, H), r(V, H), r(H, H) / H ** 0.5, r(H) * 0.1, 1 + 0.2 * r(H), 0.1 * r(H),
              0.1 * r(H), 1 + r(H).abs()]
    return ids.to(device), [f.to(device=device, dtype=dtype) for f in floats]


def run(fn, ids, floats, norm_state, training, grad_seed=1, **kw):
    """Calls an entry point; returns (out, h_T, rm, rv) and the gradients of the six differentiable
    inputs of the loss sum(out * A) + sum(h_T * C), A and C fixed random (zeros for an input the
    loss does not use: the weight and bias with skip_first_linear at T = 1, where the ops give zeros)."""
    leaves = [f.detach().clone().requires_grad_(i < 6) for i, f in enumerate(floats)]
    out, h, rm, rv = fn(ids, *leaves, norm_state, training, **kw)
    g = torch.Generator().manual_seed(grad_seed)
    A = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    C = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h)
    grads = torch.autograd.grad((out * A).sum() + (h * C).sum(), leaves[:6], materialize_grads=True)
    return [out.detach(), h.detach(), rm, rv], list(grads)


def seed_loop(ids, floats, norm_state, training, momentum=0.1, eps=1e-5, grad_seed=1, skip_first_linear=False):
    """The lesson's loop with real modules (nn.Embedding, nn.Linear, nn.BatchNorm1d called once per
    step, which updates its own running statistics); same return convention as `run`. 1-D ids:
    one step, with the step op's (B, H) output. skip_first_linear: the first step without the
    linear layer, as the seed's Model0 (`bn(relu(i_h(x[:, 0])))`)."""
    step = ids.dim() == 1
    if step:
        ids = ids[:, None]
    h0, emb, weight, bias, gamma, beta, rm, rv = [f.detach().clone() for f in floats]
    H, V = weight.shape[0], emb.shape[0]
    i_h = nn.Embedding(V, H).to(emb)
    h_h = nn.Linear(H, H).to(weight)
    bn = nn.BatchNorm1d(H, momentum=momentum, eps=eps).to(gamma)
    with torch.no_grad():
        i_h.weight.copy_(emb)
        h_h.weight.copy_(weight)
        h_h.bias.copy_(bias)
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
        bn.running_mean.copy_(rm)
        bn.running_var.copy_(rv)
    bn.train(training)
    h0 = h0.requires_grad_()
    h, res = h0, []
    for i in range(ids.shape[1]):
        h = h + i_h(ids[:, i])
        r = F.relu(h if skip_first_linear and i == 0 else h_h(h))
        o = bn(r)
        res.append(o)
        h = o if norm_state else r
    out = res[0] if step else torch.stack(res, 1)
    g = torch.Generator().manual_seed(grad_seed)
    A = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    C = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h)
    leaves = [h0, i_h.weight, h_h.weight, h_h.bias, bn.weight, bn.bias]
    grads = torch.autograd.grad((out * A).sum() + (h * C).sum(), leaves, materialize_grads=True)
    return [out.detach(), h.detach(), bn.running_mean.clone(), bn.running_var.clone()], list(grads)


def fused(backend):
    """The entry point on `backend`: zoo_cell_sequence, or zoo_cell_step for 1-D ids."""
    def fn(ids, *args, **kw):
        return (zoo_cell_step if ids.dim() == 1 else zoo_cell_sequence)(ids, *args, backend=backend, **kw)
    return fn


def reference_fn(ids, *args, **kw):
    return (reference.zoo_cell_step if ids.dim() == 1 else reference.zoo_cell_sequence)(ids, *args, **kw)


NAMES = ("out", "h_T", "running_mean", "running_var") + tuple("grad_" + p for p in PARAMS)


def assert_all_close(got, want, rtol, atol, what=""):
    """got/want: (values, grads) pairs; compared in float64, each tensor named on failure."""
    for name, a, b in zip(NAMES, got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a.double().cpu(), b.double().cpu(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{what} {name}: {m}")


def max_errors(got, want):
    return {n: (a.double().cpu() - b.double().cpu()).abs().max().item()
            for n, a, b in zip(NAMES, got[0] + got[1], want[0] + want[1])}


def check_backend(backend, B, T, H, norm_state, training, V=11, device="cpu", step=False,
                  dtypes=(torch.float64, torch.float32), seed=0, momentum=0.1, eps=1e-5, skip_first_linear=False):
    """`backend` against the float64 reference and the seed loop, in each of `dtypes` (Triton:
    float32 only). step: the single-step op (T must be 1)."""
    ids, f64 = make_inputs(B, T, H, V=V, device=device, seed=seed)
    if step:
        ids = ids[:, 0]
    bn = dict(momentum=momentum, eps=eps)
    if skip_first_linear:  # (a keyword of the sequence op only)
        bn["skip_first_linear"] = True
    truth = run(reference_fn, ids, f64, norm_state, training, **bn)
    what = f"{backend} B={B} T={T} H={H} V={V} norm_state={norm_state} training={training} step={step} {bn}"
    if backend != "triton" and torch.float64 in dtypes:  # the float64 kernels (cpu, cuda) agree to rounding
        ours64 = run(fused(backend), ids, f64, norm_state, training, **bn)
        assert_all_close(ours64, truth, rtol=1e-7, atol=1e-9, what=what + " float64 vs reference")
        assert_all_close(ours64, seed_loop(ids, f64, norm_state, training, **bn), rtol=1e-7, atol=1e-9,
                         what=what + " float64 vs seed loop")
    if torch.float32 not in dtypes:
        return
    # float32: the error against float64 truth is bounded by a yardstick times a factor, plus ~8
    # float32 ulps of the value's scale. The yardstick is PyTorch's own float32 error (the seed loop
    # and the reference, in float32), or where the problem's conditioning allows more, the error
    # float32 rounding of the inputs alone causes (rounding_sensitivity): torch's error depends on
    # its BLAS code path (measured at B=3 T=2 H=130: 6x smaller with MKL's AVX-512 kernels than with
    # its AVX2 ones, on the same machine), and a yardstick that lucky would hold equally exact
    # float32 computations to luck. The factor is 8, not 2: with B = 3 some features have all but one
    # ReLU output at zero, their batch variance is ill-conditioned, and which implementation rounds
    # luckier is a coin toss (measured: up to ~7x either way between equally exact float32
    # computations). A wrong formula misses by orders of magnitude more.
    f32 = [f.float() for f in f64]
    ours = run(fused(backend), ids, f32, norm_state, training, **bn)
    torch_errs = [max_errors(run(reference_fn, ids, f32, norm_state, training, **bn), truth),
                  max_errors(seed_loop(ids, f32, norm_state, training, **bn), truth),
                  rounding_sensitivity(ids, f64, norm_state, training, truth, **bn)]
    errs = max_errors(ours, truth)
    for name, t in zip(NAMES, truth[0] + truth[1]):
        bound = 8 * max(e[name] for e in torch_errs) + 1e-6 * (1 + t.abs().max().item())
        assert errs[name] <= bound, f"{what} float32 {name}: error {errs[name]:.3g} > bound {bound:.3g}"


def rounding_sensitivity(ids, f64, norm_state, training, truth, samples=4, **bn):
    """The largest error (as max_errors) of the float64 reference on inputs each perturbed by a
    random relative amount of up to one float32 unit roundoff (2^-24): what float32 rounding of
    the inputs alone does to each output, the error a backward-stable float32 computation must be
    allowed. Deterministic (fixed seeds)."""
    worst = {}
    for s in range(samples):
        g = torch.Generator().manual_seed(100 + s)
        perturbed = [f * (1 + 2.0 ** -24 * (2 * torch.rand(f.shape, generator=g, dtype=torch.float64) - 1)
                          .to(f.device)) for f in f64]
        errs = max_errors(run(reference_fn, ids, perturbed, norm_state, training, **bn), truth)
        worst = {k: max(worst.get(k, 0.0), v) for k, v in errs.items()}
    return worst


def check_op_running_statistics(op, device="cpu", dtype=torch.float64, B=6, T=4, H=9):
    """The forward op itself (the entry points hand back the inputs in eval, so only this sees
    the op's own running-statistics outputs): training gives the reference's update, eval an
    exact copy; both in new tensors, the inputs untouched."""
    ids, floats = make_inputs(B, T, H, dtype=dtype, device=device)
    before = [f.clone() for f in floats[6:]]
    for training in (True, False):
        rm, rv = op(ids, *floats, False, training, 0.3, 1e-3)[2:4]
        want = reference.zoo_cell_sequence(ids, *floats, False, training, 0.3, 1e-3)[2:4] if training else before
        for got, expected, given in zip((rm, rv), want, floats[6:]):
            assert got.data_ptr() != given.data_ptr(), "the op must return new running-statistics tensors"
            torch.testing.assert_close(got, expected, rtol=1e-6 if dtype == torch.float32 else 1e-12,
                                       atol=0 if not training else 1e-6)
    for given, kept in zip(floats[6:], before):
        torch.testing.assert_close(given, kept, rtol=0, atol=0)
