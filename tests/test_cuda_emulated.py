"""The CUDA kernels, run on the CPU.

csrc/cuda/rnn.cu and zoo_cell.cu are compiled as C++ against tests/cuda_emulation/emulation.h,
which runs each GPU thread as a fiber and each __syncthreads() as a switch between them (see
that header for what it models and what not). Every op is compared with the C++ CPU kernel of
the same op on the same inputs, on each of its paths (one persistent launch, for the GRU / RNN
one cooperative launch over the SMs, per step, and for stacked layers one wavefront launch):
outputs, workspaces, running statistics and every gradient. csrc/rnn_network.cpp is compiled
against the emulation too, so the network op runs with the GPU's choice of path and is compared
with the CPU's. Each call also runs with the threads (and a cooperative launch's blocks) in
reverse order between barriers and must give the same bits (a missing barrier would not). This
is the CUDA half's only execution test without a GPU; `-m gpu` runs the real thing.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hnrnn._C  # noqa: F401  (the CPU kernels the emulated ones are compared with)

ROOT = Path(__file__).resolve().parents[1]
EMULATION = ROOT / "tests" / "cuda_emulation"


# Set by test_under_address_sanitizer for the run of this file it starts (with libasan preloaded).
UNDER_ASAN = os.environ.get("HNRNN_EMULATION_ASAN") == "1"


def build_emulation():
    """csrc/cuda compiled against the emulation (torch's JIT extension build, cached between runs)."""
    from torch.utils.cpp_extension import load
    asan = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"] if UNDER_ASAN else []
    # One build folder per torch release: torch 2.14 locks it with an OS lock on a file it leaves
    # in place, torch 2.11 (the GPU machines') waits for that file to vanish, forever.
    release = "_".join(torch.__version__.split("+")[0].split(".")[:2])
    return load(name=f"hnrnn_cuda_emulation_torch{release}" + ("_asan" if UNDER_ASAN else ""),
                sources=[str(EMULATION / f) for f in ("module.cpp", "rnn.cpp", "zoo_cell.cpp", "network.cpp")]
                + [str(ROOT / "csrc" / "op_checks.cpp")],
                extra_include_paths=[str(ROOT / "csrc" / d) for d in ("cuda", "include", ".")],
                extra_cflags=["-O1" if UNDER_ASAN else "-O2", "-Wno-unknown-pragmas"] + asan,
                extra_ldflags=asan[:1])


@pytest.fixture(scope="module")
def emu():
    return build_emulation()


def both_orders(emu, fn):
    """fn() with the threads in order and in reverse between barriers: the same bits."""
    emu.set_thread_order(False)
    first = fn()
    emu.set_thread_order(True)
    try:
        second = fn()
    finally:
        emu.set_thread_order(False)
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), \
            f"output {i} depends on the order of the threads between barriers (a race)"
    return first


def assert_close_all(got, want, names, tol):
    assert len(got) == len(want)
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        torch.testing.assert_close(a.to(b.dtype), b, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------ GRU / RNN
# (kind, dtype, H, path). The persistent path holds W_hh in one block's shared memory (H = 128 in
# fp32 is the largest persistent GRU); past it, the grid path spreads W_hh over the blocks of one
# cooperative launch, one slice per SM; where that does not fit either, the per-step path runs
# (cuBLAS GEMM + pointwise kernel). The grid and per-step cases shrink the emulated device
# (DEVICE_LIMITS) so that small problems take them: a few SMs and little shared memory for the
# grid path (several blocks, the last one with fewer units), one SM for the per-step path.
RECURRENCE_CASES = [
    ("gru", torch.float32, 7, "persistent"),
    ("gru", torch.float32, 128, "persistent"),
    ("gru", torch.float32, 50, "grid"),
    ("gru", torch.float32, 140, "per-step"),
    ("gru", torch.float64, 33, "persistent"),
    ("gru", torch.float64, 64, "grid"),
    ("gru", torch.float64, 100, "per-step"),
    ("rnn_tanh", torch.float32, 64, "persistent"),
    ("rnn_tanh", torch.float32, 130, "grid"),
    ("rnn_tanh", torch.float64, 170, "per-step"),
    ("rnn_relu", torch.float32, 9, "persistent"),
    ("rnn_relu", torch.float32, 97, "grid"),
    ("rnn_relu", torch.float32, 240, "per-step"),
    ("gru", torch.bfloat16, 64, "persistent"),
    ("gru", torch.bfloat16, 72, "grid"),
    ("gru", torch.float16, 50, "persistent"),
    ("gru", torch.float16, 80, "grid"),
]
# (SMs, shared memory per block) of the emulated device, per path: the grid cases' one-block
# kernels need more than 32 KiB; the per-step cases' W_hh alone is more than 200 KiB.
DEVICE_LIMITS = {"grid": (5, 32 * 1024), "per-step": (1, 200 * 1024)}


@pytest.fixture
def device_limits(emu):
    """emu.set_device_limits(sm_count, max_shared or the default), restored after the test."""
    default_sms, default_shared = emu.default_device_limits()
    yield lambda sms, shared=None: emu.set_device_limits(sms, shared or default_shared)
    emu.set_device_limits(default_sms, default_shared)


def launches_of(emu, fn):
    """fn()'s result and the (plain, cooperative) launches it made."""
    before = emu.launch_counts()
    result = fn()
    return result, tuple(a - b for a, b in zip(emu.launch_counts(), before))


def path_launches(path, T):
    """The (plain, cooperative) launches one call makes on each path."""
    return {"persistent": (1, 0), "grid": (0, 1), "per-step": (T, 0)}[path]


def assert_path(path, launches, T, calls=2):
    """The launches of `calls` calls on `path` (both_orders: two)."""
    want = tuple(calls * n for n in path_launches(path, T))
    assert launches == want, f"expected the {path} path ({want} launches), got {launches}"


def recurrence_call(module, kind, *args, backward=False, save=True):
    """The forward (args ending in reverse, lengths; `save` appended) or backward op of `kind`."""
    name = ("gru" if kind == "gru" else "rnn") + "_recurrence" + ("_backward" if backward else "")
    fn = getattr(module, name)
    if kind != "gru":  # the RNN ops take `relu` before `reverse`
        args = (*args[:-2], kind == "rnn_relu", *args[-2:])
    return fn(*args) if backward else fn(*args, save)


@pytest.mark.parametrize("kind,dtype,H,path", RECURRENCE_CASES,
                         ids=[f"{k}-{str(d)[6:]}-H{h}-{p}" for k, d, h, p in RECURRENCE_CASES])
@pytest.mark.parametrize("reverse,packed,B", [(False, False, 19), (True, True, 19), (False, False, 1)],
                         ids=["forward", "reverse-packed", "B1"])
def test_recurrence(emu, device_limits, kind, dtype, H, path, reverse, packed, B):
    G = 3 if kind == "gru" else 1
    T = 6  # B = 19 rows: three blocks of the persistent kernels / passes of the grid ones, the last partial
    if path in DEVICE_LIMITS:
        device_limits(*DEVICE_LIMITS[path])
    g = torch.Generator().manual_seed(H)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    gx, h0, w, b = r(T, B, G * H), r(B, H), r(G * H, H) / H ** 0.5, r(G * H) * 0.1
    lengths = torch.randint(1, T + 1, (B,), generator=g) if packed else None
    if packed:
        lengths[0] = T
    grad_out, grad_h = r(T, B, H), r(B, H)
    # The CPU kernels compute in fp32 / fp64: 16-bit inputs are compared with fp32 on the same values.
    low = dtype in (torch.float16, torch.bfloat16)
    cast = lambda *ts: [t.to(dtype) for t in ts]  # noqa: E731
    ref_dtype = torch.float32 if low else dtype
    ref_cast = lambda *ts: [t.to(dtype).to(ref_dtype) for t in ts]  # noqa: E731

    out, launches = launches_of(emu, lambda: both_orders(
        emu, lambda: recurrence_call(emu, kind, *cast(gx, h0, w, b), reverse, lengths)))
    assert_path(path, launches, T)
    want = recurrence_call(torch.ops.hnrnn, kind, *ref_cast(gx, h0, w, b), reverse, lengths)
    tol = {torch.float64: 1e-12, torch.float32: 2e-5}.get(dtype, 3e-2)
    assert_close_all(out, want, ["out", "h_n", "ws"], tol)
    # save=False (a forward no backward follows) writes no workspace: the same output and state
    unsaved, launches = launches_of(emu, lambda: recurrence_call(emu, kind, *cast(gx, h0, w, b), reverse, lengths,
                                                                 save=False))
    assert_path(path, launches, T, calls=1)
    assert unsaved[2].shape == (0,)
    assert torch.equal(unsaved[0], out[0]) and torch.equal(unsaved[1], out[1])

    ws = out[2]
    grads, launches = launches_of(emu, lambda: both_orders(
        emu, lambda: recurrence_call(emu, kind, *cast(grad_out, grad_h), ws, *cast(w), reverse, lengths,
                                     backward=True)))
    assert_path(path, launches, T)
    want = recurrence_call(torch.ops.hnrnn, kind, *ref_cast(grad_out, grad_h), ws.to(ref_dtype), *ref_cast(w),
                           reverse, lengths, backward=True)
    names = ["d gates_x", "d gates_h", "d h0"] if kind == "gru" else ["d gates", "d h0"]
    assert_close_all(grads, want, names, 10 * tol if low else tol)


def test_forced_path(emu, device_limits, monkeypatch):
    """HNRNN_CUDA_RECURRENCE_PATH forces a path (for benchmarks that compare them at one shape):
    each that can run gives the same results (the grid path past its work limit too), and stacks
    then run layer by layer; a path that cannot run, or an unknown name, is a clear error."""
    T, B, H = 5, 19, 64
    g = torch.Generator().manual_seed(0)
    gx, h0, w, b = (torch.randn(*s, generator=g) for s in ((T, B, 3 * H), (B, H), (3 * H, H), (3 * H,)))
    w, b = w / H ** 0.5, b * 0.1
    grad_out, grad_h = torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g)
    results = {}
    for path in ("persistent", "grid", "step"):
        monkeypatch.setenv("HNRNN_CUDA_RECURRENCE_PATH", path)
        out, fwd_launches = launches_of(emu, lambda: emu.gru_recurrence(gx, h0, w, b, False, None, True))
        grads, bwd_launches = launches_of(emu, lambda: emu.gru_recurrence_backward(grad_out, grad_h, out[2], w, False,
                                                                                 None))
        want = {"persistent": (1, 0), "grid": (0, 1), "step": (T, 0)}[path]
        assert fwd_launches == want and bwd_launches == want, (path, fwd_launches, bwd_launches)
        results[path] = [*out, *grads]
        assert not emu.stack_recurrence_fits(0, 2, H, torch.float32)
    for path in ("grid", "step"):
        assert_close_all(results[path], results["persistent"], ["out", "h_n", "ws", "d gates_x", "d gates_h", "d h0"],
                         2e-5)
    device_limits(1, 64 * 1024)  # W_hh (48 KiB) fits one block, not with the grid kernel's state tile
    monkeypatch.setenv("HNRNN_CUDA_RECURRENCE_PATH", "grid")
    with pytest.raises(RuntimeError, match="HNRNN_CUDA_RECURRENCE_PATH=grid: W_hh of hidden size 140 does not fit"):
        emu.gru_recurrence(torch.zeros(2, 3, 420), torch.zeros(3, 140), torch.zeros(420, 140), None, False, None, True)
    monkeypatch.setenv("HNRNN_CUDA_RECURRENCE_PATH", "persistent")
    with pytest.raises(RuntimeError, match="persistent: W_hh of hidden size 140 does not fit one block"):
        emu.gru_recurrence(torch.zeros(2, 3, 420), torch.zeros(3, 140), torch.zeros(420, 140), None, False, None, True)
    monkeypatch.setenv("HNRNN_CUDA_RECURRENCE_PATH", "fastest")
    with pytest.raises(ValueError, match="must be auto, persistent, grid or step, got 'fastest'"):
        emu.gru_recurrence(gx, h0, w, b, False, None, True)


# ------------------------------------------------------------------------------ stacked layers
MODES = {"gru": 0, "rnn_tanh": 1, "rnn_relu": 2}
# (kind, dtype, layers, H): the seed's Model5 (2-layer GRU, H = 64, fp32) is the first
STACK_CASES = [
    ("gru", torch.float32, 2, 64),
    ("gru", torch.float64, 3, 7),
    ("rnn_tanh", torch.float32, 4, 33),
    ("rnn_relu", torch.float64, 2, 16),
    ("gru", torch.bfloat16, 3, 64),
]


def stack_inputs(kind, dtype, L, H, T, B, I, bias, packed, seed=0):
    G = 3 if kind == "gru" else 1
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    weights = []
    for layer in range(L):
        weights += [r(G * H, I if layer == 0 else H) / H ** 0.5, r(G * H, H) / H ** 0.5]
        weights += [r(G * H) * 0.1, r(G * H) * 0.1] if bias else []
    lengths = torch.randint(1, T + 1, (B,), generator=g) if packed else None
    return r(T, B, I), r(L, B, H), weights, lengths


@pytest.mark.parametrize("kind,dtype,L,H", STACK_CASES,
                         ids=[f"{k}-{str(d)[6:]}-L{n}-H{h}" for k, d, n, h in STACK_CASES])
@pytest.mark.parametrize("bias,packed", [(True, False), (False, True)], ids=["bias", "nobias-packed"])
def test_stacked_layers(emu, kind, dtype, L, H, bias, packed):
    """Every layer of a unidirectional stack in one launch (the wavefront), forward and backward,
    against the CPU kernels run one layer at a time: the output, h_n, what backward reads (each
    layer's workspace and the inputs of layers 1..), every layer's gate gradients and dh0."""
    T, B, I = 7, 19, 5
    x, hx, weights, lengths = stack_inputs(kind, dtype, L, H, T, B, I, bias, packed)
    mode = MODES[kind]
    assert emu.stack_recurrence_fits(mode, L, H, dtype)
    gx0 = torch.nn.functional.linear(x, weights[0], weights[2] if bias else None)

    def run():
        outs, h_n, ws = emu.stack_recurrence(mode, gx0, hx, weights, lengths)
        return [*outs, h_n, *ws]

    got = both_orders(emu, run)
    outs, h_n, ws = got[:L], got[L], got[L + 1:]
    # save=False writes no workspaces: the same outputs and states
    unsaved_outs, unsaved_h_n, unsaved_ws = emu.stack_recurrence(mode, gx0, hx, weights, lengths, save=False)
    assert all(torch.equal(a, b) for a, b in zip([*unsaved_outs, unsaved_h_n], [*outs, h_n]))
    assert [w.shape for w in unsaved_ws] == [(0,)] * L
    low = dtype == torch.bfloat16
    up = (lambda t: t.float()) if low else (lambda t: t)  # noqa: E731
    out, want_h, saved = torch.ops.hnrnn.rnn_network(up(x), up(hx), [up(w) for w in weights], mode, L, False, 0.0,
                                                     False, lengths)
    tol = {torch.float64: 1e-12, torch.float32: 2e-5}.get(dtype, 4e-2)
    assert_close_all([outs[-1], h_n], [out, want_h], ["output", "h_n"], tol)
    assert_close_all(ws, saved[:L], [f"workspace of layer {i}" for i in range(L)], tol)
    assert_close_all(outs[:-1], saved[L:2 * L - 1], [f"input of layer {i + 1}" for i in range(L - 1)], tol)

    # backward: the gate gradients of every layer and dh0, against the CPU recurrence backward run
    # layer by layer from the top, each layer's output gradient dG_x W_ih of the layer above
    g = torch.Generator().manual_seed(1)
    grad_out, grad_h = (torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
                        for shape in ((T, B, H), (L, B, H)))
    n = 4 if bias else 2

    def run_backward():
        dgx, dgh, dh0 = emu.stack_recurrence_backward(mode, grad_out, grad_h, ws, weights, lengths)
        return [*dgx, *dgh, dh0]

    got = both_orders(emu, run_backward)
    want_dgx, want_dgh, want_dh0, go = [None] * L, [None] * L, [None] * L, up(grad_out)
    for layer in reversed(range(L)):
        args = (go, up(grad_h[layer]), up(ws[layer]), up(weights[layer * n + 1]))
        res = recurrence_call(torch.ops.hnrnn, kind, *args, False, lengths, backward=True)
        want_dgx[layer], want_dh0[layer] = res[0], res[-1]
        want_dgh[layer] = res[1] if kind == "gru" else res[0]
        go = (want_dgx[layer].flatten(0, 1) @ up(weights[layer * n])).view(T, B, -1)
    assert_close_all(got[:L], want_dgx, [f"d gates_x of layer {i}" for i in range(L)], 10 * tol if low else tol)
    assert_close_all(got[L:2 * L], want_dgh, [f"d gates_h of layer {i}" for i in range(L)], 10 * tol if low else tol)
    assert_close_all([got[-1]], [torch.stack(want_dh0)], ["d h0"], 10 * tol if low else tol)


def test_stacked_layers_past_shared_memory(emu):
    """Past one block's shared memory (or 4 layers) the stack does not fit: rnn_network then runs
    layer by layer, and a direct call is a clear error."""
    assert not emu.stack_recurrence_fits(0, 3, 64, torch.float32)  # 5 weight matrices of 64 x 193 floats
    assert emu.stack_recurrence_fits(0, 2, 64, torch.float32)
    assert not emu.stack_recurrence_fits(1, 5, 8, torch.float32)
    x, hx, weights, _ = stack_inputs("gru", torch.float32, 3, 64, 2, 3, 4, True, False)
    gx0 = torch.nn.functional.linear(x, weights[0], weights[2])
    with pytest.raises(RuntimeError, match="3 layers of hidden size 64 do not fit"):
        emu.stack_recurrence(0, gx0, hx, weights, None)


# (kind, dtype, layers, H, packed): the network op as the GPU runs it (csrc/rnn_network.cpp
# compiled against the emulation: its stacked path on the emulated kernels, the per-layer path
# on the CPU kernels); the last case does not fit one SM (float64 at H = 64) and runs per layer.
NETWORK_CASES = [
    ("gru", torch.float32, 2, 64, False),
    ("rnn_relu", torch.float64, 3, 16, True),
    ("gru", torch.float64, 2, 64, True),
]


@pytest.mark.parametrize("kind,dtype,L,H,packed", NETWORK_CASES,
                         ids=[f"{k}-{str(d)[6:]}-L{n}-H{h}{'-packed' if p else ''}" for k, d, n, h, p in NETWORK_CASES])
def test_network_op(emu, kind, dtype, L, H, packed):
    """hnrnn::rnn_network and its backward with the GPU's choice of path, against the CPU's:
    output, h_n, the saved tensors, and the gradients of the input, hx and every weight."""
    T, B, I = 7, 19, 5
    x, hx, weights, lengths = stack_inputs(kind, dtype, L, H, T, B, I, True, packed)
    mode = MODES[kind]
    args = (mode, L, False, 0.0, True, lengths, True)  # training, no dropout, saving for backward

    def run():
        out, h_n, saved = emu.rnn_network(x, hx, weights, *args)
        return [out, h_n, *saved]

    got = both_orders(emu, run)
    unsaved_out, unsaved_h_n, unsaved = emu.rnn_network(x, hx, weights, *args[:-1], False)
    assert unsaved == [] and torch.equal(unsaved_out, got[0]) and torch.equal(unsaved_h_n, got[1])
    want_out, want_h, want_saved = torch.ops.hnrnn.rnn_network(x, hx, weights, *args)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert_close_all(got, [want_out, want_h, *want_saved],
                     ["output", "h_n"] + [f"saved {i}" for i in range(len(want_saved))], tol)
    g = torch.Generator().manual_seed(1)
    grad_out, grad_h = (torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
                        for shape in ((T, B, H), (L, B, H)))
    bargs = (mode, L, False, lengths, True)
    gi, ghx, gw = emu.rnn_network_backward(grad_out, grad_h, x, hx, weights, got[2:], *bargs)
    wi, whx, ww = torch.ops.hnrnn.rnn_network_backward(grad_out, grad_h, x, hx, weights, want_saved, *bargs)
    assert_close_all([gi, ghx, *gw], [wi, whx, *ww],
                     ["d input", "d hx"] + [f"d weight {i}" for i in range(len(ww))], tol)


# ------------------------------------------------------------------------------ zoo cell
# (B, H, dtype, path): the seed's shape and a small one run persistently (one block, W and the
# state in shared memory); H above 128, or a batch too large for shared memory, per step.
ZOO_CASES = [
    (64, 64, torch.float32, "persistent"),
    (5, 7, torch.float64, "persistent"),
    (6, 130, torch.float32, "per-step"),
    (64, 128, torch.float64, "per-step"),
]


def zoo_inputs(B, H, T, dtype, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    ids = torch.randint(0, V, (B, T), generator=g)
    floats = [r(B, H), r(V, H), r(H, H) / H ** 0.5, r(H) * 0.1, 1 + 0.2 * r(H), 0.1 * r(H), 0.1 * r(H),
              1 + r(H).abs()]
    return ids, floats, [r(B, T, H), r(B, H)]


@pytest.mark.parametrize("B,H,dtype,path", ZOO_CASES, ids=[f"B{b}-H{h}-{str(d)[6:]}-{p}" for b, h, d, p in ZOO_CASES])
@pytest.mark.parametrize("norm_state", [True, False], ids=["normstate", "normout"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("skip_first_linear", [False, True], ids=["", "skip_first_linear"])
def test_zoo_cell(emu, B, H, dtype, path, norm_state, training, skip_first_linear):
    T = 4
    ids, floats, (grad_out, grad_h) = zoo_inputs(B, H, T, dtype)
    args = (norm_state, training, 0.1, 1e-5, skip_first_linear)
    fwd = both_orders(emu, lambda: emu.zoo_cell_forward(ids, *floats, *args))
    want = torch.ops.hnrnn.zoo_cell_forward(ids, *floats, *args)
    tol = 1e-11 if dtype == torch.float64 else 1e-4
    assert_close_all(fwd, want, ["out", "h_T", "running_mean", "running_var", "xs", "rs", "mean", "invstd"], tol)

    weight, bn_weight = floats[2], floats[4]
    saved = fwd[4:]  # xs, rs, mean, invstd
    bwd = both_orders(emu, lambda: emu.zoo_cell_backward(grad_out, grad_h, ids, floats[1].shape[0], weight,
                                                         bn_weight, *saved, norm_state, training,
                                                         skip_first_linear))
    want = torch.ops.hnrnn.zoo_cell_backward(grad_out, grad_h, ids, floats[1].shape[0], weight, bn_weight, *saved,
                                             norm_state, training, skip_first_linear)
    assert_close_all(bwd, want, ["d h0", "d emb", "d weight", "d bias", "d bn_weight", "d bn_bias"], tol)


@pytest.mark.parametrize("B,H", [(5, 7), (6, 130)], ids=["persistent", "per-step"])
def test_zoo_cell_id_out_of_range_reads_nan(emu, B, H):
    """Past the entry point's check (skipped under torch.compile) the CUDA kernels read an
    out-of-range id as a NaN embedding row: that row's outputs from that step on are NaN, the
    other rows are untouched (eval: no batch statistics to spread it), nothing is read out of bounds."""
    T, V = 4, 11
    ids, floats, _ = zoo_inputs(B, H, T, torch.float32, V=V)
    args = (False, False, 0.1, 1e-5, False)  # normalised output, eval
    bad = ids.clone()
    bad[1, 2] = V
    out = emu.zoo_cell_forward(bad, *floats, *args)[0]
    want = torch.ops.hnrnn.zoo_cell_forward(ids, *floats, *args)[0]
    assert out[1, 2:].isnan().all()
    rows = [b for b in range(B) if b != 1]
    torch.testing.assert_close(out[rows], want[rows], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1, :2], want[1, :2], atol=1e-4, rtol=1e-4)


def test_emulator_catches_faulty_kernels(emu):
    """The two faults the emulator claims to expose, in two deliberately faulty kernels
    (tests/cuda_emulation/module.cpp): a write past the dynamic shared memory, and a read of
    another thread's shared write without a barrier between them (which changes with the order
    of the threads)."""
    with pytest.raises(RuntimeError, match="wrote past its 128 bytes of dynamic shared memory"):
        emu.faulty_write_past_shared()
    with pytest.raises(AssertionError, match="a race"):
        both_orders(emu, lambda: [emu.faulty_missing_barrier()])
    with pytest.raises(RuntimeError, match="more than a block can have"):
        emu.faulty_too_much_shared()


def test_emulator_catches_faulty_cooperative_kernels(emu, device_limits):
    """What the emulator claims for cooperative launches, on faulty kernels (module.cpp): a block
    reading another's write without a grid barrier between them changes with the order of the
    blocks (and with the barrier it does not); threads or blocks that disagree on grid barriers,
    a grid barrier in a plain launch, and a grid larger than the device runs at once, fail."""
    with pytest.raises(AssertionError, match="a race"):
        both_orders(emu, lambda: [emu.faulty_missing_grid_barrier(False)])
    out = both_orders(emu, lambda: [emu.faulty_missing_grid_barrier(True)])[0]
    assert out.tolist() == [1.0, 2.0, 3.0, 0.0]
    with pytest.raises(RuntimeError, match="1 of 3 blocks wait at the grid barrier while the others finished"):
        emu.faulty_grid_barrier_in_one_block()
    with pytest.raises(RuntimeError, match=r"threads wait at __syncthreads\(\) while others wait at the grid barrier"):
        emu.faulty_grid_barrier_in_one_thread()
    with pytest.raises(RuntimeError, match="grid_sync\\(\\) in a launch that is not cooperative"):
        emu.faulty_grid_barrier_not_cooperative()
    with pytest.raises(RuntimeError, match=r"a cooperative launch of 265 blocks, more than the device runs at once \(264\)"):
        emu.faulty_cooperative_grid_too_large()
    device_limits(3)
    with pytest.raises(RuntimeError, match=r"a cooperative launch of 7 blocks, more than the device runs at once \(6\)"):
        emu.faulty_cooperative_grid_too_large()


@pytest.mark.skipif(UNDER_ASAN, reason="this is the run under the sanitizer")
def test_under_address_sanitizer():
    """The tests above again with the kernels built with AddressSanitizer (libasan preloaded into
    a fresh interpreter): every read and write the kernels make into tensor memory is checked
    against the tensor's allocation, the CPU stand-in for compute-sanitizer's memcheck. First,
    that the setup catches a kernel reading one float past its input at all."""
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.skip("gcc has no AddressSanitizer runtime here")
    # libstdc++ preloaded too: else ASan cannot find the __cxa_throw it intercepts (a TORCH_CHECK throws)
    libstdcxx = subprocess.run(["gcc", "-print-file-name=libstdc++.so"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, LD_PRELOAD=f"{libasan} {libstdcxx}", HNRNN_EMULATION_ASAN="1",
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1")

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)

    setup = ("import sys; sys.path.insert(0, 'tests'); import test_cuda_emulated as t; "
             "t.build_emulation().faulty_read_past_global()")
    caught = run("-c", setup)
    assert caught.returncode != 0 and "heap-buffer-overflow" in caught.stderr, caught.stderr[-3000:]
    # -s: an ASan report goes to stderr, which pytest would capture and lose when ASan exits
    suite = run("-m", "pytest", str(Path(__file__)), "-q", "-s", "-p", "no:cacheprovider", "-x")
    assert suite.returncode == 0, suite.stdout[-5000:] + suite.stderr[-5000:]
