"""The README's tables are generated from the committed result files and are current."""
import pytest

from hnrnn import report


def test_readme_tables_match_the_result_files():
    with open(report.README) as f:
        text = f.read()
    assert report.render(text) == text, "README tables are stale: run `hnrnn report` and commit"


def test_render_needs_markers():
    with pytest.raises(ValueError, match="BEGIN zoo"):
        report.render("# no markers here\n")


def test_forced_path_providers_are_shown_but_not_counted():
    """A provider "cuda:grid" (a path forced by bench_rnn.py) gets its column; hnrnn's best and the
    peers' columns use the backends' own choice only."""
    row = lambda provider, us: {"op": "gru", "mode": "forward", "provider": provider,  # noqa: E731
                                "shape": {"B": 8, "H": 512}, "median_us": us}
    table = report.bench_tables({"results": [row("cudnn", 100.0), row("cuda", 50.0), row("cuda:grid", 10.0)]})
    header, _, line = table.splitlines()[2:5]
    assert header == "| shape | cudnn (µs) | cuda (µs) | cuda:grid (µs) | best hnrnn vs cudnn |"
    assert line == "| B=8 H=512 | 100.0 | 50.0 | 10.0 | 2.00x |"
