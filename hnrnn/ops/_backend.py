"""Backend choice shared by every op family.

Every op has four backends behind one entry point:
  cuda      - hnrnn._C, CUDA kernels (CUDA tensors)
  triton    - kernels/ (CUDA tensors; CPU tensors too when TRITON_INTERPRET=1)
  cpu       - hnrnn._C, C++ kernels (CPU tensors)
  reference - hnrnn.reference, pure PyTorch (any device)
Choice: the `backend=` argument, else the HNRNN_BACKEND environment variable, else
the fastest available for the tensor's device. Asking for one that is not there is an error.
"""
import importlib.util
import os
from typing import Dict, Optional, Tuple

import torch

BACKENDS = ("cuda", "triton", "cpu", "reference")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (not built, not installed, or wrong device)."""


def _load_extension():
    try:
        from hnrnn import _C
    except ImportError:
        return None
    return _C


# Looked up once, at import: torch.compile traces the backend choice, and plain constants keep
# imports and calls into the extension out of the trace (no lru_cache wrappers to trace through).
_EXTENSION = _load_extension()
_CUDA_COMPILED = _EXTENSION is not None and _EXTENSION.cuda_compiled()
_TRITON_FOUND = importlib.util.find_spec("triton") is not None  # without paying for importing it


def extension():
    """The compiled hnrnn._C module, or None when it was not built."""
    return _EXTENSION


def triton_available() -> bool:
    return _TRITON_FOUND


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_may_run() -> bool:
    """Whether the triton backend can run here at all. The op modules then register their Triton
    ops at import, outside any torch.compile trace (registering inside one breaks the graph);
    CPU-only machines without the interpreter never pay for importing triton."""
    return triton_available() and (triton_interpret() or torch.cuda.is_available())


def unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """None when `backend` can run on `device`, else a sentence saying why not."""
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        ext = extension()
        if ext is None:
            return "the compiled extension hnrnn._C is not built (reinstall with `pip install --no-build-isolation -e .`)"
        if device.type != backend:
            return f"the {backend} backend runs on {backend} tensors, got tensors on {device}"
        if backend == "cuda" and not _CUDA_COMPILED:
            return "hnrnn._C was built without CUDA (no nvcc, or HNRNN_FORCE_CPU=1, at install time)"
        return None
    if backend == "triton":
        if not triton_available():
            return "triton is not installed"
        if device.type == "cuda" or (device.type == "cpu" and triton_interpret()):
            return None
        return f"the triton backend runs on cuda tensors (or cpu tensors with TRITON_INTERPRET=1), got {device}"
    return f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"


def resolve(backend: Optional[str], device: torch.device, dtype: Optional[torch.dtype] = None,
            kernel_dtypes: Optional[Dict[str, Tuple[torch.dtype, ...]]] = None) -> str:
    """The backend to use for tensors on `device`: `backend`, else $HNRNN_BACKEND, else the fastest.
    kernel_dtypes: the dtypes each backend's kernels compute in (a backend not listed takes any).
    The automatic choice passes over a backend with no kernel for `dtype` (the reference takes
    any dtype); an explicit one with no kernel for it is a TypeError."""
    kernel_dtypes = kernel_dtypes or {}

    def has_kernel(b: str) -> bool:
        return dtype is None or b not in kernel_dtypes or dtype in kernel_dtypes[b]

    backend = backend or os.environ.get("HNRNN_BACKEND") or None
    if backend is not None and backend != "auto":
        why = unavailable_reason(backend, device)
        if why is not None:
            raise BackendUnavailableError(f"backend {backend!r} is not available: {why}")
        if not has_kernel(backend):
            names = ", ".join(str(d).replace("torch.", "") for d in kernel_dtypes[backend])
            raise TypeError(f"the {backend} backend computes in {names}, got {dtype}; the reference backend "
                            "(or the automatic choice, backend=None) takes any dtype")
        return backend
    preference = ("cuda", "triton", "reference") if device.type == "cuda" else ("cpu", "reference")
    return next(b for b in preference if unavailable_reason(b, device) is None and has_kernel(b))


def autocast_enabled(device: torch.device) -> bool:
    """Whether torch.autocast is on for `device`'s type (False for meta, where
    torch.is_autocast_enabled raises). Meta is named rather than asking
    torch.amp.is_autocast_available, which torch 2.11's dynamo cannot trace (a graph break)."""
    return device.type != "meta" and torch.is_autocast_enabled(device.type)


def autocast_cast(tensors, device: torch.device, kernel_dtypes):
    """The cast policy of hnrnn's ops under torch.autocast (one place for every op family).

    An op computes with all its float inputs in one dtype: autocast's low-precision dtype where
    the backend's kernel has one (the 16-bit kernels accumulate in fp32), else float32. float64
    tensors, non-float tensors and None pass unchanged, as under autocast; outside autocast (for
    `device`'s type) everything does. GEMMs outside the ops (input projection, output layer)
    follow autocast's own rules."""
    if not autocast_enabled(device):
        return tuple(tensors)
    dtype = torch.get_autocast_dtype(device.type)
    if dtype not in kernel_dtypes:
        dtype = torch.float32
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in tensors)


def without_autocast(device: torch.device):
    """Where the reference backend runs: under autocast its inputs were cast by autocast_cast,
    and it computes in that dtype like the kernels, not in autocast's per-op dtypes."""
    return torch.autocast(device.type, enabled=False)


def value_range(t: torch.Tensor) -> Tuple[int, int]:
    """(min, max) of a non-empty integer tensor on the host: one reduction and one transfer (one
    wait for the device on CUDA, where two .item() calls would wait twice)."""
    return tuple(torch.stack(torch.aminmax(t)).tolist())


def available(device: torch.device):
    """Backends that can run on `device`, fastest first."""
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]
