"""hnrnn: fused Triton and C++/CUDA kernels for recurrent networks (the fast.ai human-numbers lesson)."""
__version__ = "0.1.0"


def __getattr__(name):
    # hnrnn.GRU / hnrnn.RNN without importing torch at `import hnrnn` time.
    if name in ("GRU", "RNN"):
        from hnrnn.nn import rnn
        return getattr(rnn, name)
    if name in ("nn", "ops", "reference", "kernels"):  # subpackages on first touch
        import importlib
        return importlib.import_module(f"hnrnn.{name}")
    raise AttributeError(f"module 'hnrnn' has no attribute {name!r}")
