"""`hnrnn bench`: runs a benchmark suite (benchmarks/bench_<suite>.py, pytest-benchmark) and
writes benchmarks/results/<device-slug>/<suite>.json: the environment, every measurement
(median and spread per call), and the speedup of each hnrnn backend over each peer measured
in the same process at the same shape and mode.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

import torch

from hnrnn.cli import write_json
from hnrnn.ops import BACKENDS
from hnrnn.report import RESULTS, ROOT


def device_slug(device: torch.device) -> str:
    """A folder name for results measured on `device`: 'cpu-2core', 'nvidia-h100-80gb-hbm3'."""
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{os.cpu_count()}core"


def saved_activation_bytes(forward, inputs=()):
    """Bytes of the tensors autograd saves for backward during one `forward()`, each storage
    counted once, leaving out the storages of `inputs` (weights and inputs live anyway): the
    activations a provider keeps between forward and backward, measured the same way for
    cuDNN, torch.compile and hnrnn (every autograd Function saves through these hooks)."""
    kept = {t.untyped_storage().data_ptr() for t in inputs}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in kept:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = forward()
    del outputs
    return sum(saved.values())


def suites():
    return sorted(f[len("bench_"):-3] for f in os.listdir(os.path.join(ROOT, "benchmarks"))
                  if f.startswith("bench_") and f.endswith(".py"))


def summarize(raw: dict, suite: str) -> dict:
    """pytest-benchmark's JSON -> hnrnn's results file (times per call, in microseconds)."""
    results = []
    for b in raw["benchmarks"]:
        info, stats = b["extra_info"], b["stats"]
        per_call = 1e6 / info["inner"]
        if info.get("cuda_event_ms"):  # GPU rounds timed by CUDA events (benchmarks/conftest.py)
            stats = _round_stats([ms / 1e3 for ms in info["cuda_event_ms"]])
        row = {"op": info["op"], "mode": info["mode"], "shape": info["shape"],
               "provider": info["provider"], "median_us": stats["median"] * per_call,
               "iqr_us": stats["iqr"] * per_call, "min_us": stats["min"] * per_call,
               "rounds": stats["rounds"], "calls_per_round": info["inner"],
               "timer": "cuda events" if info.get("cuda_event_ms") else "host"}
        for memory in ("peak_memory_bytes", "saved_bytes"):
            if memory in info:
                row[memory] = info[memory]
        results.append(row)
    run = {"suite": suite, "environment": raw.get("hnrnn_environment", {}), "results": results,
           "ratios": ratios(results)}
    if raw.get("hnrnn_skipped_for_time"):
        run["skipped_for_time"] = raw["hnrnn_skipped_for_time"]
    return run


def _round_stats(seconds):
    """Median, interquartile range (statistics.quantiles), min and count of round times."""
    if len(seconds) < 2:
        return {"median": seconds[0], "iqr": 0.0, "min": seconds[0], "rounds": 1}
    q1, _, q3 = statistics.quantiles(seconds, n=4)
    return {"median": statistics.median(seconds), "iqr": q3 - q1, "min": min(seconds), "rounds": len(seconds)}


def ratios(results):
    """Speedup of every hnrnn backend over every peer (eager, compile, cudnn, ...) per case."""
    cases = {}
    for r in results:
        key = (r["op"], r["mode"], json.dumps(r["shape"], sort_keys=True))
        cases.setdefault(key, {})[r["provider"]] = r["median_us"]
    out = []
    for (op, mode, shape), times in sorted(cases.items()):
        for backend in [p for p in times if p in BACKENDS]:
            for peer in [p for p in times if p not in BACKENDS]:
                out.append({"op": op, "mode": mode, "shape": json.loads(shape), "backend": backend,
                            "peer": peer, "speedup": times[peer] / times[backend]})
    return out


# Set by run_suite for the benchmark process: the time.time() after which benchmarks/conftest.py
# skips the cases not yet started, so a time-boxed run still writes what it measured.
DEADLINE_ENV = "HNRNN_BENCH_DEADLINE"


def run_suite(suite: str, pytest_args=(), out_dir: Optional[str] = None,
              max_seconds: Optional[float] = None) -> str:
    """Run benchmarks/bench_<suite>.py in a subprocess; returns the results file written. With
    `max_seconds`, cases not started by then are skipped (counted as skipped_for_time)."""
    if suite not in suites():
        raise ValueError(f"no benchmark suite {suite!r}; have: {', '.join(suites())}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = out_dir or os.path.join(RESULTS, device_slug(device))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = os.path.join(tmp, "raw.json")
        cmd = [sys.executable, "-m", "pytest", os.path.join(ROOT, "benchmarks", f"bench_{suite}.py"),
               "-o", "addopts=", "-p", "no:cacheprovider", "-q", f"--benchmark-json={raw_path}",
               *pytest_args]
        env = dict(os.environ)
        if max_seconds is not None:
            env[DEADLINE_ENV] = repr(time.time() + max_seconds)
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        if rc != 0:
            raise RuntimeError(f"benchmark suite {suite} failed (pytest exit code {rc})")
        # when no case ran, pytest-benchmark leaves the file empty (5.2) or writes none (5.3)
        if not os.path.exists(raw_path) or os.path.getsize(raw_path) == 0:
            raise RuntimeError(f"benchmark suite {suite}: no case ran (all skipped or deselected); "
                               "nothing written")
        with open(raw_path) as f:
            raw = json.load(f)
    path = os.path.join(out_dir, f"{suite}.json")
    write_json(summarize(raw, suite), path, indent=1)
    return path
