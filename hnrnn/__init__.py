"""hnrnn: fused Triton and C++/CUDA kernels for recurrent networks (the fast.ai human-numbers lesson)."""
__version__ = "0.1.0"
