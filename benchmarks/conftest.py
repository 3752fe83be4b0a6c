"""Shared timing for every benchmark suite (pytest-benchmark underneath).

Each benchmark calls the `timed` fixture:

    timed(fn, op="zoo_cell", provider="cpu", mode="forward+backward", B=64, H=64, T=20,
          saved_by=forward, inputs=(x, h0, *params))

It warms `fn` up, then times `inner` back-to-back calls per round (`inner` chosen so a round
lasts about a millisecond); on a GPU each round is timed between two CUDA events and waits for
the second, so launch queues are measured honestly while the synchronisation cost is amortised
(the results use the event times; pytest-benchmark's host times stay in its own JSON). On a GPU it also records the
peak memory of the timed calls. With `saved_by` (a forward that builds the autograd graph) it
records the bytes autograd saves for backward in one call, outside the timing, on any device.
The per-call statistics,
the provider, mode and shape go to `benchmark.extra_info`; `hnrnn bench` turns the
pytest-benchmark JSON into benchmarks/results/<device>/<suite>.json with ratios between
providers measured in the same process.
"""
import os
import time

import pytest
import torch

from hnrnn.bench import DEADLINE_ENV, saved_activation_bytes

_skipped_for_time = []


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture
def timed(benchmark):
    def run(fn, *, op, provider, mode, device=torch.device("cpu"), rounds=None, saved_by=None, inputs=(),
            **shape):
        device = torch.device(device)
        for _ in range(3):  # warm-up: allocator, autotuning, torch.compile
            fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        once = max(time.perf_counter() - t0, 1e-7)
        inner = max(1, min(1000, int(1e-3 / once)))

        round_ms = []  # on a GPU: each round's time between CUDA events, what results report

        def many():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            for _ in range(inner):
                fn()
            if device.type == "cuda":
                end.record()
                end.synchronize()
                round_ms.append(start.elapsed_time(end))

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        benchmark.pedantic(many, rounds=rounds or max(5, min(50, int(0.5 / (once * inner)))),
                           warmup_rounds=1)
        info = dict(op=op, provider=provider, mode=mode, shape=shape, inner=inner,
                    device=str(device))
        if device.type == "cuda":
            info["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device) - base
            info["cuda_event_ms"] = round_ms[1:]  # the first is pedantic's warm-up round
        if saved_by is not None:
            info["saved_bytes"] = saved_activation_bytes(saved_by, inputs)
        benchmark.extra_info.update(info)

    return run


@pytest.fixture(autouse=True)
def _time_box(request):
    """hnrnn bench --max-seconds: a case not started before the deadline is skipped."""
    deadline = os.environ.get(DEADLINE_ENV)
    if deadline and time.time() > float(deadline):
        _skipped_for_time.append(request.node.name)
        pytest.skip("hnrnn bench --max-seconds: the suite's time box is spent")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    from hnrnn.cli import environment

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    output_json["hnrnn_environment"] = environment(device)
    output_json["hnrnn_skipped_for_time"] = len(_skipped_for_time)


def pytest_collection_modifyitems(items):
    """torch.compile's cases run after all the others. Once a function has been compiled, later
    autograd calls in the same process pay extra host time (about 60 us per forward+backward on
    the 2-core CPU, eager loop and hnrnn alike), which would tax whichever providers ran after."""
    def compiles(item):
        return hasattr(item, "callspec") and item.callspec.params.get("provider") == "compile"
    items[:] = [i for i in items if not compiles(i)] + [i for i in items if compiles(i)]
