"""Property tests (hypothesis): every op and module over random shapes, sizes, flags and dtypes
against ground truths that do not share their code: the zoo cell against hnrnn.reference and
the seed's loop of torch.nn modules, the recurrence ops against torch's own cells, hnrnn.nn
against torch.nn, the zoo models against the seed's eager code. Outputs, states, running
statistics, every gradient.

CPU tier: the cpu and reference backends. Interpreter tier (marked, its own process): triton,
with fewer and smaller examples. Python allocations come back NaN-filled here (the nan_empty
fixture) and so do the compiled kernels' (HNRNN_DEBUG_FILL_NAN=1, tests/conftest.py), so an
output that a kernel leaves partly unwritten fails the comparisons. The example budget comes
from the hypothesis profile (tests/conftest.py): derandomized in CI, `--hypothesis-profile=deep`
for a longer random search.

float64 is compared tightly; float32 (and, for the Triton recurrence, float16) against
the float64 truth, within 2x of torch's own error in that dtype (8x for the batch-normed zoo cell
in training: see zoo_cell_cases.check_backend).
"""
import pytest
import torch

pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (requirements-dev.txt)")
from hypothesis import given  # noqa: E402

from hnrnn.ops._backend import extension  # noqa: E402
from fuzz_cases import module_trio, run_module, run_recurrence, run_zoo_model, zoo_model_pair  # noqa: E402
from fuzz_strategies import (DTYPES, fuzz, module_cases, recurrence_cases, zoo_cell_cases,  # noqa: E402
                             zoo_model_cases)
from rnn_helpers import assert_matches, assert_within_2x_torch_error  # noqa: E402
from zoo_cell_cases import check_backend  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_empty")

CPU_BACKENDS = ["cpu", "reference"]
interpreter = pytest.mark.interpreter


def check_recurrence(backend, case, dtype):
    truth = run_recurrence("torch", case, torch.float64)
    got = run_recurrence(backend, case, dtype)
    if dtype == torch.float64:
        assert_matches(got, truth, atol=1e-10, rtol=1e-9)
    else:
        # The floor: 2 ulps of a 16-bit dtype at the tensor's scale, as a case of a few elements
        # makes torch's own error a noisy yardstick there (float32 keeps the default, ~8 ulps).
        floor = 2 * torch.finfo(dtype).eps if dtype.itemsize == 2 else 1e-6
        assert_within_2x_torch_error(got, run_recurrence("torch", case, dtype), truth, floor=floor)


def check_module(backend, case):
    ref64, ref, ours = module_trio(case, backend)
    got = run_module(ours, case, case["dtype"])
    assert all(g.dtype == case["dtype"] for g in got)
    truth = run_module(ref64, case, torch.float64)
    if case["dtype"] == torch.float64:
        assert_matches(got, truth, atol=1e-10, rtol=1e-9)
    else:
        assert_within_2x_torch_error(got, run_module(ref, case, torch.float32), truth)


def check_zoo_model(backend, case):
    eager, ours = zoo_model_pair(case, backend)
    eager64 = zoo_model_pair(dict(case, dtype=torch.float64), "eager")[0]  # before any run changes eager
    got = run_zoo_model(ours, case)
    assert all(g.dtype == case["dtype"] for g in got if g.is_floating_point())
    if case["dtype"] == torch.float64:
        assert_matches(got, run_zoo_model(eager, case), atol=1e-9, rtol=1e-7)
    else:
        assert_within_2x_torch_error(got, run_zoo_model(eager, case), run_zoo_model(eager64, case))


# ------------------------------------------------------------------------- CPU tier

def test_allocations_start_as_nan():
    # What makes an unwritten output fail here: Python allocations (the nan_empty fixture) and
    # the compiled kernels' buffers (hnrnn::empty_output) both start as NaN.
    assert torch.empty(4).isnan().all() and torch.empty_like(torch.ones(2)).isnan().all()
    assert torch.ones(1).new_empty(3).isnan().all()
    assert extension().debug_fill_nan()



@pytest.mark.parametrize("backend", CPU_BACKENDS)
@fuzz()
@given(case=zoo_cell_cases(), dtype=DTYPES)
def test_zoo_cell(backend, case, dtype):
    check_backend(backend, dtypes=(dtype,), **case)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@fuzz(1.5)
@given(case=recurrence_cases(), dtype=DTYPES)
def test_recurrence_ops(backend, case, dtype):
    check_recurrence(backend, case, dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@fuzz(1.5)
@given(case=module_cases())
def test_modules_match_torch_nn(backend, case):
    check_module(backend, case)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@fuzz()
@given(case=zoo_model_cases())
def test_zoo_models_match_eager(backend, case):
    check_zoo_model(backend, case)


# ------------------------------------------------------------------------- interpreter tier

@interpreter
@fuzz(0.5)
@given(case=zoo_cell_cases(max_b=6, max_t=3, max_h=20))
def test_zoo_cell_triton(case):
    check_backend("triton", dtypes=(torch.float32,), **case)  # the Triton zoo cell is float32


@interpreter
@fuzz(0.5)
@given(case=recurrence_cases(max_t=4, max_b=5, max_h=12), dtype=DTYPES)
def test_recurrence_ops_triton(case, dtype):
    check_recurrence("triton", case, dtype)


@interpreter
@fuzz(0.3)
@given(case=recurrence_cases(max_t=4, max_b=5, max_h=12))
def test_recurrence_ops_triton_float16(case):
    # fp32 accumulation, the state stored in 16 bits: within 2x of torch's own float16 cells.
    # Not bfloat16: the interpreter multiplies bfloat16 tl.dot operands as raw bits
    # (triton-lang/triton#11584); test_rnn_triton covers bfloat16 on the per-step path, the gpu
    # tier on the device.
    check_recurrence("triton", case, torch.float16)


@interpreter
@fuzz(0.4)
@given(case=module_cases(max_layers=2, max_h=8, max_t=4, max_b=4))
def test_modules_match_torch_nn_triton(case):
    check_module("triton", case)


@interpreter
@fuzz(0.25)
@given(case=zoo_model_cases(float64_names=("Model4", "Model5"), max_h=8, max_b=4, max_t=3))
def test_zoo_models_match_eager_triton(case):
    check_zoo_model("triton", case)  # Model0..3 in float32 only: the Triton zoo cell's dtype
