"""Zoo cell speed: the lesson's eager loop, torch.compile of it, and hnrnn's backends.

    hnrnn bench zoo_cell        # -> benchmarks/results/<device>/zoo_cell.json (with same-process ratios)

Providers: eager (nn.Embedding / nn.Linear / nn.BatchNorm1d per step, as the seed), compile
(torch.compile of that loop, at the seed shapes: compiling unrolls the loop), reference, cpu, triton, cuda; unavailable ones are skipped with the
reason. Shapes: the seed's (B=64, H=64, T=3 with the state normalised as Model0/1, T=20 with the
output normalised as Model2/3), plus on CUDA with HNRNN_BENCH_GRID=1 (or =full) the grid B in
{16, 64, 256}, H in {64, 256, 1024}, T in {20, 200}. Modes: forward, forward+backward (training mode throughout; the latter also records the activations
saved for backward, and on CUDA the peak memory). Runs on the GPU when
there is one, else on the CPU. Timing: the shared `timed` fixture (benchmarks/conftest.py).
Not collected by the default test run (testpaths = tests).
"""
import itertools
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hnrnn.ops import _backend
from hnrnn.ops.zoo_cell import zoo_cell_sequence

V = 39  # the lesson's vocabulary
SEED_SHAPES = [(64, 64, 3, True), (64, 64, 20, False)]  # (B, H, T, norm_state)
GRID = ([(B, H, T, False) for B, H, T in itertools.product((16, 64, 256), (64, 256, 1024), (20, 200))]
        if os.environ.get("HNRNN_BENCH_GRID", "0") in ("1", "full") else [])
PROVIDERS = ["eager", "compile", "reference", "cpu", "triton", "cuda"]
DEVICES = ["cuda"] if torch.cuda.is_available() else ["cpu"]


def cases():
    for device in DEVICES:
        shapes = SEED_SHAPES + (GRID if device == "cuda" else [])
        for (B, H, T, ns), provider, mode in itertools.product(shapes, PROVIDERS, ("forward", "forward+backward")):
            yield pytest.param(device, provider, mode, B, H, T, ns,
                               id=f"{device}-{provider}-{mode}-B{B}-H{H}-T{T}-{'normstate' if ns else 'normout'}")


class Cell(nn.Module):
    """The seed's layers; `loop` is its forward (Model1 / Model3 style)."""

    def __init__(self, H):
        super().__init__()
        self.i_h = nn.Embedding(V, H)
        self.h_h = nn.Linear(H, H)
        self.bn = nn.BatchNorm1d(H)

    def loop(self, x, h, norm_state):
        res = []
        for i in range(x.shape[1]):
            h = h + self.i_h(x[:, i])
            r = F.relu(self.h_h(h))
            o = self.bn(r)
            res.append(o)
            h = o if norm_state else r
        return torch.stack(res, 1), h

    def fused(self, x, h, norm_state, backend):
        bn = self.bn
        out, h, rm, rv = zoo_cell_sequence(x, h, self.i_h.weight, self.h_h.weight, self.h_h.bias, bn.weight,
                                           bn.bias, bn.running_mean, bn.running_var, norm_state, True,
                                           bn.momentum, bn.eps, backend=backend)
        with torch.no_grad():
            bn.running_mean.copy_(rm)
            bn.running_var.copy_(rv)
        return out, h


def unavailable(provider, device, T):
    if provider == "eager":
        return None
    if provider == "compile":
        # compiling unrolls the T-step loop: minutes per shape at T = 200 (gpu_check.sh's time box)
        return "torch.compile measured at the seed shapes (T <= 20) only" if T > 20 else None
    return _backend.unavailable_reason(provider, torch.device(device))


@pytest.mark.parametrize("device,provider,mode,B,H,T,norm_state", list(cases()))
def test_zoo_cell(timed, device, provider, mode, B, H, T, norm_state):
    why = unavailable(provider, device, T)
    if why:
        pytest.skip(why)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    cell = Cell(H).to(device)
    x = torch.randint(0, V, (B, T), device=device)
    h0 = torch.zeros(B, H, device=device)
    if provider == "eager":
        fn = lambda: cell.loop(x, h0, norm_state)  # noqa: E731
    elif provider == "compile":
        torch._dynamo.reset()
        loop = torch.compile(cell.loop)
        fn = lambda: loop(x, h0, norm_state)  # noqa: E731
    else:
        fn = lambda: cell.fused(x, h0, norm_state, provider)  # noqa: E731

    def step():
        out, h = fn()
        if mode == "forward+backward":
            (out.sum() + h.sum()).backward()

    memory = dict(saved_by=fn, inputs=(x, h0, *cell.parameters(), *cell.buffers())) if mode != "forward" else {}
    timed(step, op="zoo_cell", provider=provider, mode=mode, device=device, **memory, B=B, H=H, T=T,
          norm_state=norm_state)
