"""Generates the README's result tables from the committed JSON files, so no number in the
README is typed by hand. Each table lives between `<!-- BEGIN name -->` / `<!-- END name -->`
markers; `hnrnn report` rewrites them, and tests/test_report.py checks they are current.
"""
import glob
import json
import os
import re
from typing import Callable, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
README = os.path.join(ROOT, "README.md")


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def zoo_section(results_dir: str = RESULTS) -> str:
    """One table per committed zoo run (benchmarks/results/*/zoo*.json)."""
    from hnrnn.cli import format_zoo_table

    parts = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "zoo*.json"))):
        with open(path) as f:
            run = json.load(f)
        env = run["environment"]
        parts.append(f"From `{_rel(path)}` ({env['device']}, torch {env['torch']}, "
                     f"mean over {run['seeds']} seeds, commit {env['commit'][:10]}):\n\n"
                     + format_zoo_table(run["rows"]))
    return "\n\n".join(parts) or "_No zoo results committed yet._"


SECTIONS: Dict[str, Callable[[], str]] = {"zoo": zoo_section}


def render(readme_text: str) -> str:
    """The README with every generated section replaced by its current content."""
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(readme_text):
            raise ValueError(f"README has no <!-- BEGIN {name} --> ... <!-- END {name} --> markers")
        readme_text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), readme_text)
    return readme_text


def update_readme(path: str = README) -> bool:
    """Rewrite the README's generated sections; True when something changed."""
    with open(path) as f:
        old = f.read()
    new = render(old)
    if new != old:
        with open(path, "w") as f:
            f.write(new)
    return new != old
