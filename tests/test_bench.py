"""The benchmark harness: pytest-benchmark JSON -> results file with same-process ratios."""
import os

from hnrnn.bench import device_slug, summarize
from hnrnn.report import bench_tables, memory_tables


def _raw():
    def b(provider, median, inner=10):
        return {"extra_info": {"op": "gru", "mode": "forward", "shape": {"B": 64, "H": 64}, "provider": provider,
                               "inner": inner},
                "stats": {"median": median, "iqr": median / 10, "min": median * 0.9, "rounds": 7}}
    return {"benchmarks": [b("eager", 1e-3), b("cudnn", 4e-4), b("cpu", 2e-4), b("reference", 2e-3)],
            "hnrnn_environment": {"device": "test"}}


def test_summarize_gives_times_per_call_and_ratios():
    run = summarize(_raw(), "gru")
    eager = next(r for r in run["results"] if r["provider"] == "eager")
    assert abs(eager["median_us"] - 100.0) < 1e-9  # 1 ms per round of 10 calls
    ratio = {(r["backend"], r["peer"]): r["speedup"] for r in run["ratios"]}
    assert abs(ratio[("cpu", "eager")] - 5.0) < 1e-9
    assert abs(ratio[("cpu", "cudnn")] - 2.0) < 1e-9
    assert abs(ratio[("reference", "cudnn")] - 0.2) < 1e-9
    assert ("eager", "cudnn") not in ratio


def test_bench_table_shows_best_backend_speedup():
    table = bench_tables(summarize(_raw(), "gru"))
    assert "| B=64 H=64 | 40.0 | 100.0 | 20.0 | 200.0 | 2.00x | 5.00x |" in table


def test_device_slug_cpu():
    import torch
    assert device_slug(torch.device("cpu")).startswith("cpu-")


def test_speedup_chart_png(tmp_path):
    import pytest
    pytest.importorskip("matplotlib")
    from hnrnn.report import speedup_chart

    def b(p, B, H, med):
        return {"extra_info": {"op": "gru", "mode": "forward", "shape": {"B": B, "H": H}, "provider": p, "inner": 1},
                "stats": {"median": med, "iqr": 0, "min": med, "rounds": 5}}
    raw = {"benchmarks": [b(p, B, H, m * H) for p, m in [("eager", 1.0), ("cpu", 0.2)] for B in (16, 64) for H in (64, 128)]}
    png = tmp_path / "gru.png"
    assert speedup_chart(summarize(raw, "gru"), str(png))
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not speedup_chart(summarize({"benchmarks": []}, "x"), str(tmp_path / "none.png"))


def test_saved_activation_bytes_counts_what_backward_keeps():
    """tanh(x @ w) saves x, w (the inputs: left out) and tanh's output; every storage once."""
    import torch

    from hnrnn.bench import saved_activation_bytes
    x, w = torch.randn(8, 16, requires_grad=True), torch.randn(16, 32, requires_grad=True)
    assert saved_activation_bytes(lambda: torch.tanh(x @ w), inputs=(x, w)) == 8 * 32 * 4
    assert saved_activation_bytes(lambda: torch.tanh(x @ w)) == (8 * 16 + 16 * 32 + 8 * 32) * 4
    y = torch.tanh(x @ w)  # two views of one storage saved: counted once
    assert saved_activation_bytes(lambda: y[:4] * y[4:], inputs=(x, w, y)) == 0
    assert saved_activation_bytes(lambda: (x.exp() * 2).exp(), inputs=(x,)) == 2 * 8 * 16 * 4
    with torch.no_grad():
        assert saved_activation_bytes(lambda: torch.tanh(x @ w)) == 0


def test_memory_table_shows_saved_and_peak_and_the_ratio_to_cudnn():
    def row(provider, saved, peak):
        return {"op": "gru", "mode": "forward+backward", "provider": provider, "shape": {"B": 8, "H": 64},
                "median_us": 1.0, "saved_bytes": saved, "peak_memory_bytes": peak}
    run = summarize({"benchmarks": []}, "gru")
    run["results"] = [row("cudnn", 2048, 4096), row("cuda", 3072, 5120), row("eager", 8192, 9216),
                      row("cuda:grid", 1024, 2048)]
    header, _, line = memory_tables(run).splitlines()[2:5]
    assert header == ("| shape | cudnn saved (KiB) | eager saved (KiB) | cuda saved (KiB) | cudnn peak (KiB) "
                      "| eager peak (KiB) | cuda peak (KiB) | cuda / cudnn saved |")
    assert line == "| B=8 H=64 | 2 | 8 | 3 | 4 | 9 | 5 | 1.50x |"
    assert memory_tables(summarize(_raw(), "gru")) == ""  # times only: no memory table


def test_summarize_keeps_the_memory_measurements():
    raw = _raw()
    raw["benchmarks"][2]["extra_info"].update(saved_bytes=1000, peak_memory_bytes=3000)
    cpu = next(r for r in summarize(raw, "gru")["results"] if r["provider"] == "cpu")
    assert (cpu["saved_bytes"], cpu["peak_memory_bytes"]) == (1000, 3000)
    eager = next(r for r in summarize(raw, "gru")["results"] if r["provider"] == "eager")
    assert "saved_bytes" not in eager


def test_environment_names_the_driver(tmp_path, monkeypatch):
    """Result files carry the NVIDIA driver's version (nvidia-smi's), None off CUDA or without it."""
    import os

    import torch

    from hnrnn.cli import environment
    assert environment(torch.device("cpu"))["driver"] is None
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = --id=0 ] && echo " 570.86.15"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    from hnrnn.cli import _driver_version
    assert _driver_version(torch.device("cuda", 0)) == "570.86.15"
    assert _driver_version(torch.device("cuda", 1)) is None  # nvidia-smi printed nothing
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert _driver_version(torch.device("cuda", 0)) is None


def test_a_suite_runs_and_writes_its_results(tmp_path):
    """bench_zoo_cell.py end to end at the seed's T = 3 (its reference and compile cases left out):
    times per provider and mode, the saved activations of forward+backward, same-process ratios."""
    import json

    from hnrnn.bench import run_suite
    path = run_suite("zoo_cell", ["-k", "T3 and (eager or cpu) and not reference and not compile"], str(tmp_path))
    with open(path) as f:
        run = json.load(f)
    got = {(r["provider"], r["mode"]): r for r in run["results"]}
    assert set(got) == {(p, m) for p in ("eager", "cpu") for m in ("forward", "forward+backward")}
    assert all(r["median_us"] > 0 and r["shape"] == {"B": 64, "H": 64, "T": 3, "norm_state": True}
               for r in got.values())
    assert got["cpu", "forward+backward"]["saved_bytes"] > 3 * 64 * 64 * 4  # at least one (T, B, H) tensor
    assert "saved_bytes" not in got["cpu", "forward"]
    assert {(r["backend"], r["peer"], r["mode"]) for r in run["ratios"]} == {
        ("cpu", "eager", "forward"), ("cpu", "eager", "forward+backward")}
    assert "skipped_for_time" not in run and run["environment"]["commit"]
    assert os.listdir(tmp_path) == ["zoo_cell.json"]


def test_a_spent_time_box_writes_nothing(tmp_path):
    import pytest

    from hnrnn.bench import run_suite
    (tmp_path / "zoo_cell.json").write_text("committed")
    with pytest.raises(RuntimeError, match="no case ran"):
        run_suite("zoo_cell", ["-k", "T3"], str(tmp_path), max_seconds=0)
    assert (tmp_path / "zoo_cell.json").read_text() == "committed"


def test_summarize_counts_the_cases_the_time_box_skipped():
    raw = dict(_raw(), hnrnn_skipped_for_time=3)
    assert summarize(raw, "gru")["skipped_for_time"] == 3
    assert "skipped_for_time" not in summarize(_raw(), "gru")


def test_gpu_rounds_use_the_cuda_event_times():
    """On a GPU the fixture records each round between CUDA events; summarize reports those
    (per call), not pytest-benchmark's host times."""
    raw = _raw()
    raw["benchmarks"][2]["extra_info"]["cuda_event_ms"] = [3.0, 1.0, 2.0, 5.0, 4.0]  # 10 calls a round
    rows = {r["provider"]: r for r in summarize(raw, "gru")["results"]}
    assert (rows["cpu"]["timer"], rows["eager"]["timer"]) == ("cuda events", "host")
    import pytest
    assert rows["cpu"]["median_us"] == pytest.approx(300.0) and rows["cpu"]["min_us"] == pytest.approx(100.0)
    assert rows["cpu"]["rounds"] == 5 and rows["cpu"]["iqr_us"] == pytest.approx(300.0)  # quartiles 1.5, 4.5 ms
    assert abs(rows["eager"]["median_us"] - 100.0) < 1e-9
