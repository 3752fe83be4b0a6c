import os

import pytest
import torch


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
def one_thread():
    """torch.nn's CPU RNN opens an OpenMP region per small op; on a shared 2-core machine under
    load that costs a scheduler quantum each (100x slowdowns). Correctness tests that run it use
    one thread (tests/test_rnn.py covers the threaded path of hnrnn's own kernels)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
