"""The compiled extension builds and imports, CUDA half included where nvcc was available."""
import os

import pytest

from hnrnn.ops import _backend


def test_extension_imports():
    ext = _backend.extension()
    assert ext is not None, "hnrnn._C failed to import"


@pytest.mark.skipif(os.environ.get("HNRNN_EXPECT_CUDA") != "1", reason="set HNRNN_EXPECT_CUDA=1 (CI) to require the CUDA build")
def test_cuda_half_compiled():
    assert _backend.extension().cuda_compiled(), "CUDA kernels were not compiled into hnrnn._C"


def test_unknown_backend_is_a_clear_error():
    import torch
    with pytest.raises(_backend.BackendUnavailableError, match="unknown backend"):
        _backend.resolve("nope", torch.device("cpu"))


def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    import torch
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(_backend.BackendUnavailableError, match="TRITON_INTERPRET"):
        _backend.resolve("triton", torch.device("cpu"))


def test_default_cpu_backend_is_compiled():
    import torch
    assert _backend.resolve(None, torch.device("cpu")) == "cpu"


def test_cpu_kernels_run_on_every_thread():
    # The CPU kernels split batch blocks with at::parallel_for, which is inlined into the
    # extension: built without torch's parallel-backend flags (-fopenmp) it silently runs serially.
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _backend.extension().parallel_for_threads(8) == 2
    finally:
        torch.set_num_threads(threads)
