"""The benchmark harness: pytest-benchmark JSON -> results file with same-process ratios."""
from hnrnn.bench import device_slug, summarize
from hnrnn.report import bench_tables


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
