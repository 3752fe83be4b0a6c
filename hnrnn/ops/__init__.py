"""hnrnn ops: one module per op family (registration, fake kernels, autograd, backend choice)."""
from hnrnn.ops._backend import BACKENDS, BackendUnavailableError, available, resolve  # noqa: F401
