"""Builds hnrnn._C from csrc/ and installs kernels/ as hnrnn.kernels.

The CPU half is always built. The CUDA half (csrc/cuda/*.cu) is added when torch
is a CUDA build and nvcc is found, unless HNRNN_FORCE_CPU=1. With no GPU visible,
TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0" so CUDA code still compiles (CI has no GPU).
"""
import glob
import os
import shutil

from setuptools import setup

# nvcc is often not on PATH (e.g. /usr/local/cuda/bin); point torch at the toolkit before it looks.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _nvcc_found():
    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return True
    return shutil.which("nvcc") is not None


def _with_cuda():
    if os.environ.get("HNRNN_FORCE_CPU", "0") == "1":
        return False
    return torch.version.cuda is not None and _nvcc_found()


def _sources(pattern):
    # Relative paths: setuptools refuses absolute source paths in editable builds.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _openmp_flags():
    # at::parallel_for is inlined into the extension: with torch's OpenMP backend its
    # `#pragma omp parallel` only runs in parallel when the extension is compiled with
    # -fopenmp (otherwise every "parallel" loop silently runs on one thread). The extension
    # then shares the libgomp that torch has already loaded (same soname).
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        return ["-fopenmp"]
    return []


def extension():
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3"] + _openmp_flags()  # torch.utils.cpp_extension adds the C++ standard torch needs
    link_flags = _openmp_flags()
    if not _with_cuda():
        return CppExtension("hnrnn._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    nvcc_flags = ["-O3", "-lineinfo", "-DHNRNN_WITH_CUDA"]
    return CUDAExtension("hnrnn._C", sources + _sources("csrc/cuda/*.cu"),
                         include_dirs=include_dirs, extra_link_args=link_flags,
                         extra_compile_args={"cxx": cxx_flags + ["-DHNRNN_WITH_CUDA"],
                                             "nvcc": nvcc_flags})


setup(
    packages=["hnrnn", "hnrnn.ops", "hnrnn.nn", "hnrnn.kernels"],
    package_dir={"hnrnn": "hnrnn", "hnrnn.kernels": "kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
