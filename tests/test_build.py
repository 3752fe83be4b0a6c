"""The compiled extension builds and imports, CUDA half included where nvcc was available."""
import os
import re
import shutil
import subprocess

import pytest

from hnrnn.ops import _backend


def test_extension_imports():
    ext = _backend.extension()
    assert ext is not None, "hnrnn._C failed to import"


@pytest.mark.skipif(os.environ.get("HNRNN_EXPECT_CUDA") != "1", reason="set HNRNN_EXPECT_CUDA=1 (CI) to require the CUDA build")
def test_cuda_half_compiled():
    assert _backend.extension().cuda_compiled(), "CUDA kernels were not compiled into hnrnn._C"


def _cuobjdump():
    """cuobjdump: triton's bundled copy (the toolkit here has only the compiler), else on PATH."""
    try:
        import triton
        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    except ImportError:
        bundled = ""
    return bundled if os.path.exists(bundled) else shutil.which("cuobjdump")


@pytest.mark.skipif(os.environ.get("HNRNN_EXPECT_CUDA") != "1", reason="set HNRNN_EXPECT_CUDA=1 (CI) to require the CUDA build")
def test_cuda_kernels_keep_to_registers():
    # A static check of the CUDA half without a GPU (like tests/test_triton_compile.py for the
    # Triton kernels): no kernel of any compiled architecture spills to local memory or needs a stack.
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (it ships with triton's NVIDIA backend and the CUDA toolkit)")
    report = subprocess.run([tool, "--dump-resource-usage", _backend.extension().__file__], capture_output=True,
                            text=True, check=True).stdout
    usage = re.findall(r"Function (\S+):\s+REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", report)
    names = " ".join(name for name, *_ in usage)
    for kernel in ("persistent_fwd_kernel", "grid_fwd_kernel", "grid_bwd_kernel", "fwd_persistent_kernel"):
        assert kernel in names, f"no {kernel} found in hnrnn._C"
    spilling = [(name, stack, local) for name, _, stack, local in usage if int(stack) or int(local)]
    assert not spilling, f"CUDA kernels using local memory (name, stack bytes, local bytes): {spilling}"


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
