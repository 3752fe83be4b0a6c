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
