"""Zoo cell speed: the lesson's eager loop, torch.compile of it, and hnrnn's backends.

    python -m pytest benchmarks/bench_zoo_cell.py --benchmark-json benchmarks/results/<machine>/zoo_cell.json
    python benchmarks/zoo_cell_table.py benchmarks/results/<machine>/zoo_cell.json     # markdown ratios

Providers: eager (nn.Embedding / nn.Linear / nn.BatchNorm1d per step, as the seed), compiled
(torch.compile of that loop), reference, cpu, triton, cuda; unavailable ones are skipped with the
reason. Shapes: the seed's (B=64, H=64, T=3 with the state normalised as Model0/1, T=20 with the
output normalised as Model2/3) on every device, plus the grid B in {16, 64, 256}, H in {64, 256,
1024}, T in {20, 200} on CUDA. Modes: forward, forward+backward (training mode throughout).
Same inputs for every provider; CUDA timings synchronise inside the timed function.
Not collected by the default test run (testpaths = tests).
"""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hnrnn.ops import _backend
from hnrnn.ops.zoo_cell import zoo_cell_sequence

V = 39  # the lesson's vocabulary
SEED_SHAPES = [(64, 64, 3, True), (64, 64, 20, False)]  # (B, H, T, norm_state)
GRID = [(B, H, T, False) for B, H, T in itertools.product((16, 64, 256), (64, 256, 1024), (20, 200))]
PROVIDERS = ["eager", "compiled", "reference", "cpu", "triton", "cuda"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def cases():
    for device in DEVICES:
        shapes = SEED_SHAPES + (GRID if device == "cuda" else [])
        for (B, H, T, ns), provider, mode in itertools.product(shapes, PROVIDERS, ("fwd", "fwd+bwd")):
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


def unavailable(provider, device):
    if provider in ("eager", "compiled"):
        return None
    return _backend.unavailable_reason(provider, torch.device(device))


@pytest.mark.parametrize("device,provider,mode,B,H,T,norm_state", list(cases()))
def test_zoo_cell(benchmark, device, provider, mode, B, H, T, norm_state):
    why = unavailable(provider, device)
    if why:
        pytest.skip(why)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    cell = Cell(H).to(device)
    x = torch.randint(0, V, (B, T), device=device)
    h0 = torch.zeros(B, H, device=device)
    if provider == "eager":
        fn = lambda: cell.loop(x, h0, norm_state)  # noqa: E731
    elif provider == "compiled":
        torch._dynamo.reset()
        loop = torch.compile(cell.loop)
        fn = lambda: loop(x, h0, norm_state)  # noqa: E731
    else:
        fn = lambda: cell.fused(x, h0, norm_state, provider)  # noqa: E731
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        out, h = fn()
        if mode == "fwd+bwd":
            (out.sum() + h.sum()).backward()
        sync()

    for _ in range(3):  # warm-up (and compilation)
        step()
    benchmark.extra_info.update(dict(device=device, provider=provider, mode=mode, B=B, H=H, T=T,
                                     norm_state=norm_state, torch=torch.__version__,
                                     triton=_triton_version(), cuda=torch.version.cuda,
                                     threads=torch.get_num_threads(),
                                     gpu=torch.cuda.get_device_name() if device == "cuda" else None))
    benchmark(step)


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None
