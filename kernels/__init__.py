"""Triton kernels and their launchers, one file per cell (installed as hnrnn.kernels)."""
