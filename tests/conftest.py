import functools
import os

import pytest
import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the GPU machines have no hypothesis; only tests/test_fuzz.py needs it
    settings = None

if settings is not None:
    # Hypothesis profiles. "ci" (the default) is derandomized: every run tries the same examples, a
    # bounded number per test. `--hypothesis-profile=deep` searches at random, 10x longer, and keeps
    # failing examples in .hypothesis/ to replay them.
    settings.register_profile("ci", derandomize=True, max_examples=100, deadline=None, database=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("deep", settings.get_profile("ci"), derandomize=False, max_examples=1000,
                              database=settings.get_profile("default").database)
    settings.load_profile("ci")

# Every compiled kernel buffer starts as NaN (csrc/include/common.h), so an output a kernel
# leaves partly unwritten fails the comparisons. Read once by hnrnn._C: set before any test runs.
os.environ.setdefault("HNRNN_DEBUG_FILL_NAN", "1")


def pytest_collection_modifyitems(config, items):
    # GPU tests need a CUDA device; say so instead of failing when -m gpu runs without one.
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if os.environ.get("TRITON_INTERPRET") != "1":
        skip = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 set before triton is imported (tests/run.sh)")
        for item in items:
            if "interpreter" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def no_tf32():
    """IEEE float32 GEMMs and convolutions on CUDA (correctness tests compare with float64 truths)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture
def one_thread():
    """torch.nn's CPU RNN opens an OpenMP region per small op; on a shared 2-core machine under
    load that costs a scheduler quantum each (100x slowdowns). Correctness tests that run it use
    one thread (tests/test_rnn.py covers the threaded path of hnrnn's own kernels)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fill_garbage(t: torch.Tensor) -> torch.Tensor:
    """NaN for floating tensors, the largest value for integers (True for bool), in place."""
    with torch.no_grad():
        if t.is_floating_point() or t.is_complex():
            t.fill_(float("nan"))
        elif t.dtype == torch.bool:
            t.fill_(True)
        else:
            t.fill_(torch.iinfo(t.dtype).max)
    return t


def _garbage_filled(alloc):
    @functools.wraps(alloc)
    def wrapper(*args, **kwargs):
        return fill_garbage(alloc(*args, **kwargs))
    return wrapper


@pytest.fixture(scope="module")
def nan_empty():
    """Python-side allocations (torch.empty / empty_like / empty_strided, Tensor.new_empty: the
    ops in hnrnn/ops and the Triton launchers) come back NaN-filled, as fla's conftest does, so
    an unwritten output fails instead of passing on stale memory. Eager tests only: torch.compile
    would trace the wrappers."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("empty", "empty_like", "empty_strided"):
            mp.setattr(torch, name, _garbage_filled(getattr(torch, name)))
        mp.setattr(torch.Tensor, "new_empty", _garbage_filled(torch.Tensor.new_empty))
        yield
