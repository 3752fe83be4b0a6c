"""Shared helpers of the GRU / RNN tests (CPU, Triton interpreter and GPU tiers)."""
import contextlib
import copy

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence
from torch.utils._python_dispatch import TorchDispatchMode

import hnrnn.nn


def make_pair(kind, input_size, hidden_size, backend, dtype=torch.float64, device="cpu", **kw):
    """(torch.nn module, hnrnn module) with identical weights."""
    torch_cls = {"gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    ours_cls = {"gru": hnrnn.nn.GRU, "rnn": hnrnn.nn.RNN}[kind]
    ref = torch_cls(input_size, hidden_size, dtype=dtype, device=device, **kw)
    ours = ours_cls(input_size, hidden_size, dtype=dtype, device=device, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _data(t):
    return t.data if isinstance(t, PackedSequence) else t


def run_with_grads(mod, x, h0, g_out, g_h):
    """Forward, then backward of a fixed random projection of (output, h_n). Returns
    [output, h_n, d input, d h0 (if given), d every parameter] (detached)."""
    mod.zero_grad()
    xs = [x.data if isinstance(x, PackedSequence) else x]
    for t in xs + ([h0] if h0 is not None else []):
        t.grad = None
    out, h_n = mod(x, h0) if h0 is not None else mod(x)
    loss = (_data(out) * g_out).sum() + (h_n * g_h).sum()
    loss.backward()
    res = [_data(out).detach(), h_n.detach(), grad_or_zeros(xs[0])]
    if h0 is not None:
        res.append(grad_or_zeros(h0))
    res += [grad_or_zeros(p) for p in mod.parameters()]
    return res


def grad_or_zeros(t):
    """t's gradient (a copy), zeros where nothing reached t (e.g. an empty batch)."""
    return torch.zeros_like(t) if t.grad is None else t.grad.clone()


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def packed_leaf(p):
    return PackedSequence(leaf(p.data), p.batch_sizes, p.sorted_indices, p.unsorted_indices)


def assert_matches(ours, ref, atol, rtol=0.0, names=None):
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        name = names[i] if names else str(i)
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        torch.testing.assert_close(a, b.to(a.dtype), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def assert_within_2x_torch_error(ours, torch32, truth, floor=1e-6):
    """Low-precision check in the flash-attention style: our error against the float64 truth
    is at most twice torch.nn's own float32 error (plus a small floor for exact zeros)."""
    assert len(ours) == len(torch32) == len(truth)
    for i, (a, b, t) in enumerate(zip(ours, torch32, truth)):
        assert a.shape == t.shape, f"tensor {i}: shape {tuple(a.shape)} != {tuple(t.shape)}"
        if t.numel() == 0:
            continue
        t = t.to(torch.float64)
        err = (a.double() - t).abs().max().item()
        ref_err = (b.double() - t).abs().max().item()
        scale = max(1.0, t.abs().max().item())
        assert err <= 2 * ref_err + floor * scale, \
            f"tensor {i}: error {err:.3g} vs torch.nn's own error {ref_err:.3g}"


def cast_module(mod, dtype):
    m = copy.deepcopy(mod)
    return m.to(dtype)


# ---------------------------------------------------------------- forwards no backward follows

def check_unsaved_forward(op, kind, reverse, lengths, dtype=torch.float64):
    """`op(gates_x, h0, w_hh, b_hh, reverse, lengths, save)` (a GRU / RNN forward op; `kind`
    "gru", "rnn_tanh" or "rnn_relu"): with save=False it writes no workspace, returning an empty
    one, and the same output and state, bit for bit; asked not to save for a call autograd
    records, it refuses."""
    T, B, H = 5, 3, 6
    G = 3 if kind == "gru" else 1
    g = torch.Generator().manual_seed(0)
    gx, h0, w, b = (torch.randn(*s, generator=g, dtype=dtype) for s in ((T, B, G * H), (B, H), (G * H, H), (G * H,)))
    w /= H ** 0.5
    lens = None if lengths is None else torch.tensor(lengths)
    out, h_n, ws = op(gx, h0, w, b, reverse, lens, True)
    unsaved = op(gx, h0, w, b, reverse, lens, False)
    assert ws.shape == (T, B, (5 if kind == "gru" else 1) * H) and unsaved[2].shape == (0,)
    assert torch.equal(unsaved[0], out) and torch.equal(unsaved[1], h_n)
    with torch.no_grad():  # under no_grad nothing is recorded, whatever requires grad
        assert op(gx, h0, w.requires_grad_(), b, reverse, lens, False)[2].shape == (0,)
    with pytest.raises(ValueError, match="save=False, but autograd records this call"):
        op(gx, h0, w, b, reverse, lens, False)


class RecordSave(TorchDispatchMode):
    """Records the `save` argument of every hnrnn op called (below autograd) while active."""

    def __init__(self):
        super().__init__()
        self.saves = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "hnrnn":
            names = [a.name for a in func._schema.arguments]
            if "save" in names:
                i = names.index("save")
                self.saves.append(kwargs.get("save", args[i] if i < len(args) else True))
        return func(*args, **kwargs)


def check_module_saves_only_for_backward(mod, x):
    """A GRU / RNN module's ops save their workspaces where autograd records the call, and nowhere
    else (no_grad, inference_mode, parameters and input not requiring grad), with the same
    output and state, bit for bit."""
    def run(context=contextlib.nullcontext()):
        with context, RecordSave() as rec:
            out, h_n = mod(x)
        assert rec.saves, "no hnrnn op with a save argument ran"
        return out.detach(), h_n.detach(), set(rec.saves)

    out, h_n, saves = run()
    assert saves == {True}
    for context in (torch.no_grad(), torch.inference_mode()):
        got_out, got_h, saves = run(context)
        assert saves == {False} and torch.equal(got_out, out) and torch.equal(got_h, h_n)
    mod.requires_grad_(False)
    try:
        got_out, got_h, saves = run()
        assert saves == {False} and torch.equal(got_out, out) and torch.equal(got_h, h_n)
    finally:
        mod.requires_grad_(True)
