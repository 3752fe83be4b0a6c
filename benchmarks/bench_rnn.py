"""GRU / RNN speed: torch.nn (cuDNN on GPU, ATen on CPU), the eager cell loop, torch.compile of
it, and hnrnn's backends through the drop-in modules.

    hnrnn bench rnn        # -> benchmarks/results/<device>/rnn.json (with same-process ratios)

Providers: cudnn / aten (torch.nn.GRU / nn.RNN), eager (hnrnn.reference.recurrent_network: the
cell applied step by step, input projection inside the loop), compile (torch.compile of that
loop; at the seed shapes in float32 only: compiling unrolls the loop, about a minute a shape),
reference / cpu / triton / cuda (hnrnn.nn.GRU / RNN with that backend); unavailable ones are skipped with the reason.
Shapes: the seed's Model5 (GRU, 2 layers, B=64, H=64, T=20) and Model4 (RNN, 1 layer, same
sizes); on CUDA also a one-layer GRU grid B in {1, 8, 64, 256} x H in {64, 128, 256, 512, 1024}
x T in {20, 100, 500}: the grid only with HNRNN_BENCH_GRID=1 (its T=100 slice) or =full (every
T); by default the seed shapes alone, to fit a short GPU session. With HNRNN_BENCH_PATHS=1 the
cuda backend is measured again with each of its paths forced (providers cuda:persistent,
cuda:grid, cuda:step; HNRNN_CUDA_RECURRENCE_PATH, csrc/cuda/rnn.cu), to tune its choice of path;
a path that cannot run at a shape is skipped. Modes: forward, forward+backward (which also
records the activations saved for backward, and on CUDA the peak memory). Dtypes: float32 (TF32 off), and bfloat16 on CUDA.
Timing: the shared `timed` fixture (benchmarks/conftest.py). Not collected by the default run.
"""
import itertools
import os

import pytest
import torch

import hnrnn.nn
from hnrnn import reference
from hnrnn.ops import _backend

SEED = [("gru", 2, 64, 64, 20), ("rnn", 1, 64, 64, 20)]  # kind, layers, B, H, T
_GRID_T = {"1": (100,), "full": (20, 100, 500)}.get(os.environ.get("HNRNN_BENCH_GRID", "0"), ())
GRID = [("gru", 1, B, H, T) for B, H, T in itertools.product((1, 8, 64, 256), (64, 128, 256, 512, 1024), _GRID_T)]
PROVIDERS = ["nn", "eager", "compile", "reference", "cpu", "triton", "cuda"]
if os.environ.get("HNRNN_BENCH_PATHS") == "1":
    PROVIDERS += ["cuda:persistent", "cuda:grid", "cuda:step"]
DEVICES = ["cuda"] if torch.cuda.is_available() else ["cpu"]


def cases():
    for device in DEVICES:
        dtypes = (torch.float32, torch.bfloat16) if device == "cuda" else (torch.float32,)
        for dtype in dtypes:
            shapes = SEED + (GRID if device == "cuda" and dtype == torch.float32 else [])
            for shape, provider, mode in itertools.product(shapes, PROVIDERS, ("forward", "forward+backward")):
                kind, L, B, H, T = shape
                name = str(dtype).replace("torch.", "")
                yield pytest.param(device, dtype, provider, mode, *shape,
                                   id=f"{device}-{name}-{kind}-{provider}-{mode}-L{L}-B{B}-H{H}-T{T}")


def provider_name(provider, device):
    if provider == "nn":
        return "cudnn" if device == "cuda" else "aten"
    return provider


def unavailable(provider, device, dtype, kind, L, B, H, T):
    if provider in ("nn", "eager"):
        return None
    if provider == "compile":
        # compiling unrolls the T-step loop (about a minute per shape): the seed shapes, float32
        if (kind, L, B, H, T) not in SEED or dtype != torch.float32:
            return "torch.compile measured at the seed shapes in float32 only (gpu_check.sh's time box)"
        return None
    if provider == "cpu" and dtype != torch.float32 and dtype != torch.float64:
        return "the C++ CPU kernels are float32 / float64"
    return _backend.unavailable_reason(provider, torch.device(device))


@pytest.mark.parametrize("device,dtype,provider,mode,kind,L,B,H,T", list(cases()))
def test_rnn(timed, monkeypatch, device, dtype, provider, mode, kind, L, B, H, T):
    backend, _, path = provider.partition(":")
    why = unavailable(backend, device, dtype, kind, L, B, H, T)
    if why:
        pytest.skip(why)
    if path:
        monkeypatch.setenv("HNRNN_CUDA_RECURRENCE_PATH", path)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cls = {"gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    net = cls(H, H, L, batch_first=True).to(device=device, dtype=dtype)
    if backend in ("reference", "cpu", "triton", "cuda"):
        ours = {"gru": hnrnn.nn.GRU, "rnn": hnrnn.nn.RNN}[kind](H, H, L, batch_first=True, backend=backend)
        ours = ours.to(device=device, dtype=dtype)
        ours.load_state_dict(net.state_dict())
        model = ours
    elif provider == "nn":
        model = net
    else:  # the eager cell loop, or torch.compile of it
        weights = [[getattr(net, n) for n in names] for names in net._all_weights]
        mode_name = "gru" if kind == "gru" else "rnn_tanh"

        def loop(x, h0):
            out, h = reference.recurrent_network(x.transpose(0, 1), h0, weights, mode_name, L)
            return out.transpose(0, 1), h
        model = torch.compile(loop, fullgraph=True) if provider == "compile" else loop
    x = torch.randn(B, T, H, device=device, dtype=dtype, requires_grad=mode != "forward")
    h0 = torch.zeros(L, B, H, device=device, dtype=dtype)
    memory = {}

    if mode == "forward":
        def fn():
            with torch.no_grad():
                return model(x, h0)
    else:
        def fn():
            out, h = model(x, h0)
            (out.float().sum() + h.float().sum()).backward()
        memory = dict(saved_by=lambda: model(x, h0), inputs=(x, h0, *net.parameters(), *model_parameters(model)))
    if path:
        try:
            fn()
        except RuntimeError as e:  # the forced path cannot run at this shape
            if "HNRNN_CUDA_RECURRENCE_PATH" not in str(e):
                raise
            pytest.skip(str(e).splitlines()[0])
    timed(fn, op=kind, provider=provider_name(provider, device), mode=mode, device=device, **memory,
          dtype=str(dtype).replace("torch.", ""), layers=L, B=B, H=H, T=T)


def model_parameters(model):
    return model.parameters() if isinstance(model, torch.nn.Module) else ()
