"""The zoo models (Model0..Model5) on CUDA tensors with the cuda and triton backends (run with
-m gpu on a GPU machine): against the seed's eager models (float64 in training tightly, float32
in eval within 2x of eager's own float32 error against the float64 truth), the same call twice
bitwise equal, and (Model3, Model5) torch.compile(fullgraph=True) with no graph break matching
eager. Two batches each, the second from the carried state of Model3/4/5 (fuzz_cases.run_zoo_model)."""
import pytest
import torch

from fuzz_cases import run_zoo_model, zoo_model_pair
from hnrnn.zoo import MODELS
from rnn_helpers import assert_matches, assert_within_2x_torch_error
from test_compile import check_zoo_model as check_compiled_zoo_model

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_tf32")]  # see tests/conftest.py

# The Triton zoo cell is float32 only: Model0..3 on triton run float64 nowhere.
FLOAT64 = [(n, b) for b in ("cuda", "triton") for n in MODELS if b == "cuda" or n in ("Model4", "Model5")]
BACKENDS = [(n, b) for b in ("cuda", "triton") for n in MODELS]


def _case(name, dtype, training):
    return dict(name=name, vocab=39, hidden=64, B=64, T=3, training=training, dtype=dtype, seed=7)


@pytest.mark.parametrize("name,backend", FLOAT64)
def test_gpu_zoo_model_float64_matches_eager(name, backend):
    case = _case(name, torch.float64, training=True)
    eager, ours = zoo_model_pair(case, backend, device="cuda")
    assert_matches(run_zoo_model(ours, case), run_zoo_model(eager, case), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name,backend", BACKENDS)
def test_gpu_zoo_model_float32_within_2x_of_eager_error(name, backend):
    case = _case(name, torch.float32, training=False)
    eager, ours = zoo_model_pair(case, backend, device="cuda")
    eager64 = zoo_model_pair(dict(case, dtype=torch.float64), "eager", device="cuda")[0]
    assert_within_2x_torch_error(run_zoo_model(ours, case), run_zoo_model(eager, case), run_zoo_model(eager64, case))


@pytest.mark.parametrize("name,backend", BACKENDS)
def test_gpu_zoo_model_same_call_twice_is_bitwise_equal(name, backend):
    case = _case(name, torch.float32, training=True)
    first = run_zoo_model(zoo_model_pair(case, backend, device="cuda")[1], case)
    second = run_zoo_model(zoo_model_pair(case, backend, device="cuda")[1], case)
    assert len(first) == len(second) > 3
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"{name} on {backend}: tensor {i} differs between calls"


# Compiling is the slow part of the gpu tier: the two recurrences, the zoo cell's (Model3) and
# the GRU's (Model5); test_compile runs every model on the CPU backends.
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("name", ["Model3", "Model5"])
def test_gpu_zoo_model_compiles_fullgraph(name, backend):
    check_compiled_zoo_model(name, backend, device="cuda")
