"""hnrnn under torch.autocast: the drop-in GRU / RNN and the zoo models run, and their error against
a float64 truth (outputs, every gradient, running statistics) is at most 2x that of torch.nn (for
the zoo: the seed's eager loop) under the same autocast.

The cast policy (hnrnn.ops._backend.autocast_cast): a recurrence computes in the autocast dtype
where its backend's kernel has one (CUDA and Triton GRU / RNN: float16 / bfloat16, accumulating
in fp32), else in float32 (the C++ CPU kernels, every zoo-cell kernel, the reference); the GEMMs
around it (input projection, output layer) follow autocast's own rules. bfloat16 on CPU here;
the Triton kernels in float16 in the interpreter tier; float16 / bfloat16 on CUDA in the gpu tier.
"""
import copy

import pytest
import torch

import hnrnn.nn
from hnrnn.zoo import MODELS, RECIPES
from rnn_helpers import assert_within_2x_torch_error, leaf, run_with_grads

pytestmark = pytest.mark.usefixtures("one_thread")  # torch.nn's CPU RNN: see tests/conftest.py


class Autocast(torch.nn.Module):
    """Runs `inner`'s forward under torch.autocast; backward then runs outside it, as in training."""

    def __init__(self, inner, device_type, dtype):
        super().__init__()
        self.inner, self.device_type, self.dtype = inner, device_type, dtype

    def forward(self, *args):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.inner(*args)


# ---------------------------------------------------------------------------------------------
# The drop-in GRU / RNN
# ---------------------------------------------------------------------------------------------

def check_rnn_module(kind, backend, device, dtype, expected_out_dtype, floor):
    """Two-layer module at the seed's width; returns nothing, asserts the 2x bound."""
    torch.manual_seed(0)
    cls = {"gru": (torch.nn.GRU, hnrnn.nn.GRU), "rnn": (torch.nn.RNN, hnrnn.nn.RNN)}[kind]
    ref64 = cls[0](16, 64, 2, batch_first=True, dtype=torch.float64, device=device)
    ref = copy.deepcopy(ref64).float()
    ours = cls[1](16, 64, 2, batch_first=True, backend=backend, device=device)
    ours.load_state_dict(ref.state_dict())
    f64 = dict(dtype=torch.float64, device=device)
    x, h0 = torch.randn(8, 12, 16, **f64), torch.randn(2, 8, 64, **f64)
    g_out, g_h = torch.randn(8, 12, 64, **f64), torch.randn(2, 8, 64, **f64)
    truth = run_with_grads(ref64, leaf(x), leaf(h0), g_out, g_h)
    theirs = run_with_grads(Autocast(ref, device, dtype), leaf(x.float()), leaf(h0.float()), g_out, g_h)
    got = run_with_grads(Autocast(ours, device, dtype), leaf(x.float()), leaf(h0.float()), g_out, g_h)
    assert got[0].dtype == expected_out_dtype
    float32 = run_with_grads(ours, leaf(x.float()), leaf(h0.float()), g_out, g_h)
    assert (got[0].double() - float32[0].double()).abs().max() > 1e-4, "autocast had no effect"
    assert_within_2x_torch_error(got, theirs, truth, floor=floor)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_rnn_module_bfloat16_autocast_within_2x_torch(kind, backend):
    # No bfloat16 kernel on CPU: the recurrence runs in float32 on the bfloat16 input projection.
    check_rnn_module(kind, backend, "cpu", torch.bfloat16, torch.float32, floor=1e-6)


# The Triton interpreter multiplies bfloat16 tl.dot operands as raw bits (triton-lang/triton#11584,
# "not supported yet"), so the interpreter tier runs the 16-bit kernels in float16 (CPU autocast
# has it too); bfloat16 is covered on CUDA.
@pytest.mark.interpreter
@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_rnn_module_float16_autocast_within_2x_torch_triton(kind):
    check_rnn_module(kind, "triton", "cpu", torch.float16, torch.float16, floor=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["gru", "rnn"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_rnn_module_autocast_within_2x_torch(kind, backend, dtype):
    check_rnn_module(kind, backend, "cuda", dtype, dtype, floor=1e-2)


# ---------------------------------------------------------------------------------------------
# The zoo
# ---------------------------------------------------------------------------------------------

def _zoo_run(model, batches, device, dtype):
    """Two training batches (forward under autocast if dtype, backward outside), then one in
    eval. Returns the outputs, every parameter's gradient, the float buffers, the carried state."""
    res = []
    for training, (x, y) in zip((True, True, False), batches):
        model.train(training)
        with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(x)
        if training:
            RECIPES[type(model).__name__]["loss"](out.double(), y).backward()
        res.append(out.detach())
    res += [p.grad for p in model.parameters()]
    res += [b for b in model.buffers() if b.is_floating_point()]
    return res + ([model.h] if getattr(model, "h", None) is not None else [])


def check_zoo_model(name, backend, device, dtype, floor):
    torch.manual_seed(0)
    eager64 = MODELS[name](backend="eager").to(device, torch.float64)  # the seed's sizes
    eager = copy.deepcopy(eager64).float()
    ours = MODELS[name](backend=backend).to(device)
    ours.load_state_dict(eager.state_dict())
    T = RECIPES[name]["bptt"]
    batches = [(torch.randint(0, 39, (16, T), device=device), torch.randint(0, 39, (16, T), device=device))
               for _ in range(3)]
    truth = _zoo_run(eager64, batches, device, None)
    theirs = _zoo_run(eager, batches, device, dtype)
    got = _zoo_run(ours, batches, device, dtype)
    assert got[0].dtype == theirs[0].dtype == dtype  # the output layer ran in low precision
    assert_within_2x_torch_error(got, theirs, truth, floor=floor)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("name", list(MODELS))
def test_zoo_model_bfloat16_autocast_within_2x_eager(name, backend):
    check_zoo_model(name, backend, "cpu", torch.bfloat16, floor=1e-6)


@pytest.mark.interpreter
@pytest.mark.parametrize("name", ["Model1", "Model3", "Model5"])
def test_zoo_model_float16_autocast_within_2x_eager_triton(name):
    check_zoo_model(name, "triton", "cpu", torch.float16, floor=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("name", list(MODELS))
def test_gpu_zoo_model_autocast_within_2x_eager(name, backend, dtype):
    check_zoo_model(name, backend, "cuda", dtype, floor=1e-2)
