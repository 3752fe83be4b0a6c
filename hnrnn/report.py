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
        if "suite" in run:  # a benchmark suite's file (e.g. zoo_cell.json), not a training run
            continue
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


def update_charts(results_dir: str = RESULTS):
    """Write <suite>.png beside every benchmark results file that has a B x H grid."""
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "*.json"))):
        with open(path) as f:
            run = json.load(f)
        if "suite" in run:  # benchmark suites only, not zoo training runs
            speedup_chart(run, path[:-len(".json")] + ".png")


def update_readme(path: str = README) -> bool:
    """Rewrite the README's generated sections; True when something changed."""
    with open(path) as f:
        old = f.read()
    new = render(old)
    if new != old:
        with open(path, "w") as f:
            f.write(new)
    return new != old


def _shape_label(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def kind(provider: str) -> int:
    """0: a peer, 1: an hnrnn backend, 2: a backend with one path forced ("cuda:grid")."""
    from hnrnn.ops import BACKENDS

    return 2 if provider.split(":")[0] in BACKENDS and ":" in provider else int(provider in BACKENDS)


def bench_tables(run: dict) -> str:
    """Per op and mode: the median time per call of every provider, and hnrnn's best speedup.
    A provider "backend:path" (one path forced, benchmarks/bench_rnn.py) is shown but is neither
    a peer nor counted in hnrnn's best: users get the backend's own choice."""
    out = []
    groups = {}
    for r in run["results"]:
        groups.setdefault((r["op"], r["mode"]), []).append(r)
    for (op, mode), rows in groups.items():
        providers = sorted({r["provider"] for r in rows}, key=lambda p: (kind(p), p))
        peers = [p for p in providers if kind(p) == 0]
        by_shape = {}
        for r in rows:
            by_shape.setdefault(_shape_label(r["shape"]), {})[r["provider"]] = r["median_us"]
        head = ["shape"] + [f"{p} (µs)" for p in providers] + [f"best hnrnn vs {p}" for p in peers]
        lines = [f"**{op}, {mode}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for shape, times in by_shape.items():
            cells = [shape] + [f"{times[p]:.1f}" if p in times else "–" for p in providers]
            ours = [times[p] for p in times if kind(p) == 1]
            for peer in peers:
                ok = ours and peer in times
                cells.append(f"{times[peer] / min(ours):.2f}x" if ok else "–")
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


# The peer hnrnn's memory is compared with: torch.nn's fused kernels (cuDNN, ATen), else the loop.
MEMORY_PEERS = ("cudnn", "aten", "eager")


def memory_tables(run: dict) -> str:
    """Per op and mode that recorded memory (forward+backward): the activations each provider
    saves for backward and, on a GPU, its peak memory, in KiB, and each hnrnn backend's saved
    activations over the peer's (MEMORY_PEERS). Forced paths are left out: they are for tuning
    speed."""
    out = []
    groups = {}
    for r in run["results"]:
        if ("saved_bytes" in r or "peak_memory_bytes" in r) and kind(r["provider"]) < 2:
            groups.setdefault((r["op"], r["mode"]), []).append(r)
    for (op, mode), rows in groups.items():
        providers = sorted({r["provider"] for r in rows}, key=lambda p: (kind(p), p))
        peer = next((p for p in MEMORY_PEERS if p in providers), None)
        ours = [p for p in providers if kind(p) == 1]
        kinds = [(k, label) for k, label in (("saved_bytes", "saved"), ("peak_memory_bytes", "peak"))
                 if any(k in r for r in rows)]
        head = (["shape"] + [f"{p} {label} (KiB)" for _, label in kinds for p in providers]
                + ([f"{p} / {peer} saved" for p in ours] if peer and kinds[0][0] == "saved_bytes" else []))
        by_shape = {}
        for r in rows:
            by_shape.setdefault(_shape_label(r["shape"]), {})[r["provider"]] = r
        lines = [f"**{op}, {mode}: memory**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for shape, got in by_shape.items():
            cells = [shape] + [f"{got[p][k] / 1024:.0f}" if k in got.get(p, {}) else "–"
                               for k, _ in kinds for p in providers]
            if len(head) > len(cells):
                base = got.get(peer, {}).get("saved_bytes")
                cells += [f"{got[p]['saved_bytes'] / base:.2f}x" if base and "saved_bytes" in got.get(p, {})
                          else "–" for p in ours]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _provenance(path: str, run: dict) -> str:
    """Where a suite's numbers come from: the file, the versions, the commit, what was left out."""
    env = run["environment"]
    versions = f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
    if env.get("driver"):
        versions += f"driver {env['driver']}, "
    cut = (f" ({run['skipped_for_time']} cases left out by the run's time box)"
           if run.get("skipped_for_time") else "")
    return (f"From `{_rel(path)}` ({versions}commit {str(env.get('commit'))[:10]}), median time per "
            f"call, measured side by side in one process{cut}:")


def bench_section(results_dir: str = RESULTS) -> str:
    parts = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "*.json"))):
        with open(path) as f:
            run = json.load(f)
        if "suite" not in run:  # a zoo training run: zoo_section's
            continue
        part = (f"### {run['suite']} on {run['environment'].get('device', '?')}\n\n"
                f"{_provenance(path, run)}\n\n{bench_tables(run)}")
        memory = memory_tables(run)
        if memory:
            part += f"\n\nMemory of the same runs:\n\n{memory}"
        parts.append(part)
    return "\n\n".join(parts) or "_No benchmark results committed yet._"


SECTIONS["bench"] = bench_section


def speedup_chart(run: dict, path: str, baseline: str = "eager") -> bool:
    """PNG: speedup over `baseline` vs hidden size and vs batch size, one line per provider,
    one row of plots per (op, mode). False when there is nothing to plot or no matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = {}
    for r in run["results"]:
        if {"B", "H"} <= set(r["shape"]):
            groups.setdefault((r["op"], r["mode"]), []).append(r)
    groups = {k: v for k, v in groups.items() if any(r["provider"] == baseline for r in v)}
    if not groups:
        return False
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.6 * len(groups)), squeeze=False)
    for row, ((op, mode), rows) in enumerate(groups.items()):
        base = {json.dumps(r["shape"], sort_keys=True): r["median_us"] for r in rows if r["provider"] == baseline}
        for col, (axis, fixed) in enumerate((("H", "B"), ("B", "H"))):
            ax = axes[row][col]
            # Hold the other dimension (and any others) at their most common value.
            common = max({r["shape"][fixed] for r in rows}, key=lambda v: sum(r["shape"][fixed] == v for r in rows))
            for provider in sorted({r["provider"] for r in rows} - {baseline}):
                pts = sorted((r["shape"][axis], base[k] / r["median_us"]) for r in rows
                             if r["provider"] == provider and r["shape"][fixed] == common
                             and (k := json.dumps(r["shape"], sort_keys=True)) in base)
                if pts:
                    ax.plot(*zip(*pts), "o-", label=provider)
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"{axis} ({fixed}={common})")
            ax.set_ylabel(f"speedup over {baseline}")
            ax.set_title(f"{op}, {mode}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
