"""The Triton kernels compiled for the GPUs this project runs on (sm_90: H100 / H200), without one.

The interpreter tier checks what the kernels compute; this checks what only the compiler sees:
each kernel, at the configurations its launcher produces at the extremes of each path (the
largest resident weights, the largest one-program zoo tiles, the per-step kernels), must compile
for sm_90, ask for no more shared memory than a block can have there, and keep its working set
in registers (ptxas spills at most 1 KiB a thread: a kernel that spills more is a kernel whose
tile or warp count is wrong, as the float32 GRU forward once spilled 10 KB). The launchers run on
CPU tensors with their launches recorded instead of run (nothing here needs a GPU or the
interpreter); triton ships the ptxas that compiles them.
"""
import os
import re
import shutil
import subprocess
import tempfile

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":  # triton.jit then gives interpreted functions
    pytest.skip("compiles for the GPU: run without TRITON_INTERPRET=1", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from hnrnn.kernels import _common, gru, rnn, zoo_cell  # noqa: E402

SM90 = GPUTarget("cuda", 90, 32)
SM90_SHARED_MEMORY = 232448  # bytes of shared memory one block can opt in to on H100 / H200 (227 KiB)
MAX_SPILL_BYTES = 1024
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
_POINTER = {torch.float32: "*fp32", torch.float64: "*fp64", torch.bfloat16: "*bf16", torch.float16: "*fp16",
            torch.int64: "*i64", torch.int32: "*i32"}
_OPTIONS = ("num_warps", "num_stages")


def _signature(kernel, args, kwargs):
    """(signature, constexprs, options) of one launch, as triton.compile takes them."""
    values = dict(zip(kernel.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k not in _OPTIONS})
    signature, constexprs = {}, {}
    for p in kernel.params:
        v = values[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[p.name] = _POINTER[v.dtype]
        elif isinstance(v, bool):
            signature[p.name] = "i1"
        elif isinstance(v, int):
            signature[p.name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
        elif isinstance(v, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: cannot type argument {p.name}={v!r}")
    return signature, constexprs, {k: kwargs[k] for k in _OPTIONS if k in kwargs}


def spill_stores(ptx: str) -> int:
    """Bytes a thread spills to local memory, as ptxas -v reports it for sm_90a (Triton's target)."""
    ptxas = PTXAS if os.path.exists(PTXAS) else shutil.which("ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        log = subprocess.run([ptxas, "-arch=sm_90a", "-v", path, "-o", os.devnull], capture_output=True, text=True,
                             check=True).stderr
    return int(re.search(r"(\d+) bytes spill stores", log).group(1))


class _Recorder:
    """Stands in for wrap_triton(kernel): kernel[grid](*args, **kwargs) records the launch into
    `launches` (once per distinct configuration) instead of running it."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return self.record

    def record(self, *args, **kwargs):
        sig, const, opts = _signature(self.kernel, args, kwargs)
        key = (self.kernel.__name__, tuple(sig.items()), tuple((k, str(v)) for k, v in const.items()),
               tuple(opts.items()))
        self.launches.setdefault(key, (self.kernel, sig, const, opts))


def recorded_launches(monkeypatch, run):
    """The distinct kernel launches (kernel, signature, constexprs, options) that `run()` makes."""
    launches = {}
    for module in (_common, gru, rnn, zoo_cell):
        monkeypatch.setattr(module, "wrap_triton", lambda kernel: _Recorder(kernel, launches))
    run()
    return list(launches.values())


def _recurrence(kind, dtype, B, H, T=2, packed_reverse=True):
    """Forward and backward of one recurrence, by default with lengths and reversed (the most code)."""
    gates = 3 if kind == "gru" else 1
    x = torch.randn(T, B, gates * H, dtype=dtype)
    h0, w, b = torch.randn(B, H, dtype=dtype), torch.randn(gates * H, H, dtype=dtype), torch.randn(gates * H, dtype=dtype)
    lengths = torch.full((B,), T, dtype=torch.int64) if packed_reverse else None
    if kind == "gru":
        out, h_n, ws = gru.gru_forward(x, h0, w, b, packed_reverse, lengths)
        gru.gru_backward(out, h_n, ws, w, packed_reverse, lengths)
    else:
        out, h_n, ws = rnn.rnn_forward(x, h0, w, b, True, packed_reverse, lengths)
        rnn.rnn_backward(out, h_n, ws, w, True, packed_reverse, lengths)


def _zoo(B, H, T=2, V=39, skip_first_linear=False):
    ids = torch.randint(0, V, (B, T))
    h0, emb, w, v = torch.randn(B, H), torch.randn(V, H), torch.randn(H, H), torch.rand(H) + 0.5
    out, h_T, _, _, xs, rs, mean, invstd = zoo_cell.zoo_cell_forward_triton(ids, h0, emb, w, v, v, v, v, v, True,
                                                                             True, 0.1, 1e-5, skip_first_linear)
    zoo_cell.zoo_cell_backward_triton(out, h_T, ids, V, w, v, xs, rs, mean, invstd, True, True, skip_first_linear)


_DTYPE_OF_SIZE = {2: torch.bfloat16, 4: torch.float32, 8: torch.float64}
# The largest resident weights of each cell and element size (B = 64 gives the largest BLOCK_B).
CASES = {f"{'gru' if gates == 3 else 'rnn'}-resident-{_DTYPE_OF_SIZE[size]}-H{block_h}":
         (lambda g=gates, s=size, h=block_h: _recurrence("gru" if g == 3 else "rnn", _DTYPE_OF_SIZE[s], 64, h))
         for (gates, size), block_h in _common.RESIDENT_MAX_BLOCK_H.items()}
CASES.update({
    # the seed's Model5 shape, forward direction without lengths (the code the benchmarks run)
    "gru-seed": lambda: _recurrence("gru", torch.float32, 64, 64, T=20, packed_reverse=False),
    "rnn-seed": lambda: _recurrence("rnn", torch.float32, 64, 64, T=20, packed_reverse=False),
    "gru-per-step-float32": lambda: _recurrence("gru", torch.float32, 64, 300),
    "gru-per-step-bfloat16": lambda: _recurrence("gru", torch.bfloat16, 64, 300),
    "gru-per-step-float64": lambda: _recurrence("gru", torch.float64, 64, 300),
    "rnn-per-step-float32": lambda: _recurrence("rnn", torch.float32, 64, 300),
    "zoo-seed": lambda: _zoo(64, 64, T=3),
    "zoo-seed-model0": lambda: _zoo(64, 64, T=3, skip_first_linear=True),
    "zoo-per-step-B256-H1024": lambda: _zoo(256, 1024),
    "zoo-per-step-B256-H1024-skip-first-linear": lambda: _zoo(256, 1024, skip_first_linear=True),
})
# the zoo cell's one-program kernels at the corners of use_sequence_kernel: the largest batch per H
for _H in (16, 32, 64, 128):
    _B = max(2 ** k for k in range(4, 14) if zoo_cell.use_sequence_kernel(2 ** k, _H))
    CASES[f"zoo-sequence-B{_B}-H{_H}"] = lambda b=_B, h=_H: _zoo(b, h)


@pytest.mark.parametrize("case", CASES)
def test_kernels_compile_for_sm90_within_shared_memory_and_registers(case, monkeypatch):
    launches = recorded_launches(monkeypatch, CASES[case])
    assert launches, f"{case}: no kernel launched"
    for kernel, signature, constexprs, options in launches:
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=SM90,
                                  options=options)
        what = f"{kernel.__name__} {constexprs} {options}"
        assert compiled.metadata.shared <= SM90_SHARED_MEMORY, (
            f"{what} asks for {compiled.metadata.shared} bytes of shared memory; "
            f"a block gets at most {SM90_SHARED_MEMORY} on sm_90")
        spilled = spill_stores(compiled.asm["ptx"])
        assert spilled <= MAX_SPILL_BYTES, f"{what} spills {spilled} bytes a thread (at most {MAX_SPILL_BYTES})"


def test_resident_cases_launch_the_resident_kernels(monkeypatch):
    # the table's configurations really take the resident path (and so are the ones compiled above)
    for (gates, size), block_h in _common.RESIDENT_MAX_BLOCK_H.items():
        kind = "gru" if gates == 3 else "rnn"
        names = {k.__name__ for k, *_ in recorded_launches(
            monkeypatch, lambda: _recurrence(kind, _DTYPE_OF_SIZE[size], 64, block_h))}
        assert names == {f"_{kind}_fwd_kernel", f"_{kind}_bwd_kernel"}, (kind, size, names)
