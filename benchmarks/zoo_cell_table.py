"""Markdown table of a bench_zoo_cell.py JSON: median time per call and speed-up over the eager loop
and over torch.compile of the loop, per (device, shape, mode). Usage: python zoo_cell_table.py FILE.json"""
import json
import sys
from collections import defaultdict


def table(path):
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        e = b["extra_info"]
        key = (e["device"], e["B"], e["H"], e["T"], e["norm_state"], e["mode"])
        groups[key][e["provider"]] = b["stats"]["median"]
    lines = [f"commit {data.get('commit_info', {}).get('id', '?')[:10]}, "
             f"{data.get('machine_info', {}).get('cpu', {}).get('brand_raw', '')}", "",
             "| device | B | H | T | BN on | mode | provider | median | vs eager | vs compiled |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups):
        device, B, H, T, ns, mode = key
        times = groups[key]
        for provider, t in sorted(times.items(), key=lambda kv: kv[1]):
            ratio = lambda base: f"{times[base] / t:.1f}x" if base in times else "-"  # noqa: E731
            lines.append(f"| {device} | {B} | {H} | {T} | {'state' if ns else 'output'} | {mode} | {provider} | "
                         f"{t * 1e6:.0f} us | {ratio('eager')} | {ratio('compiled')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
