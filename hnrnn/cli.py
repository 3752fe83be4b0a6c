"""`hnrnn` command line: zoo, train, data, bench, report (see `hnrnn --help`)."""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

DEFAULT_RUNS = "runs"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but no CUDA device is visible")
    return device


def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _driver_version(device: torch.device):
    """The NVIDIA driver's version as nvidia-smi reports it ("570.86.15"); None off CUDA or
    where nvidia-smi cannot tell."""
    if device.type != "cuda":
        return None
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        version = out.stdout.strip() if out.returncode == 0 else ""
        return version or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """Where a result was measured: attached to every JSON this package writes."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
        "driver": _driver_version(device),
        "python": platform.python_version(), "commit": _git_commit(),
        "torch_threads": torch.get_num_threads(),
    }


def write_json(obj, path: str, indent: int = 2):
    """`obj` as JSON at `path`, written whole or not at all (learner.atomic_write): a run killed
    mid-write (a time box, say) leaves the previous file or none, never half of one."""
    from hnrnn.learner import atomic_write
    atomic_write(path, lambda f: json.dump(obj, f, indent=indent), binary=False)


def train_model(name, data, *, backend, device, seed, epochs=None, max_lr=None, pct_start=None,
                bptt=None, bs=64, checkpoint=None, resume=False, plot=None, verbose=True):
    """Train one zoo model with the lesson's recipe (overridable). Returns (history, seconds)."""
    from hnrnn.learner import Learner
    from hnrnn.zoo import MODELS, RECIPES

    recipe = RECIPES[name]
    torch.manual_seed(seed)
    model = MODELS[name](vocab_size=len(data.vocab), backend=backend)
    learn = Learner(model, data, recipe["loss"], recipe["metric"], bs=bs,
                    bptt=bptt or recipe["bptt"], device=device,
                    metric_name=recipe["metric"].__name__, verbose=verbose)
    t0 = time.perf_counter()
    history = learn.fit_one_cycle(epochs or recipe["epochs"], max_lr or recipe["max_lr"],
                                  pct_start=recipe["pct_start"] if pct_start is None else pct_start,
                                  checkpoint=checkpoint, resume=resume, plot=plot)
    return history, time.perf_counter() - t0


def _backend_label(backend, device):
    """The backend actually used, for the table (auto resolves per device)."""
    if backend == "eager":
        return "eager"
    from hnrnn.ops import resolve
    return resolve(None if backend == "auto" else backend, device)


def cmd_zoo(args):
    from hnrnn.data import human_numbers
    from hnrnn.zoo import MODELS, RECIPES

    device = _device(args.device)
    data = human_numbers()
    names = args.models or list(MODELS)
    # The first optimizer a process builds imports torch._dynamo (over a second on a CPU): a
    # one-time cost of the process, kept out of the first model's timed runs.
    import torch._dynamo  # noqa: F401
    rows = []
    for name in names:
        accs, seconds, to_target = [], [], []
        target = min(RECIPES[name]["seed_accuracy"])
        for seed in range(args.seeds):
            print(f"\n{name} (seed {seed}, backend {args.backend}, {device})", flush=True)
            history, t = train_model(name, data, backend=args.backend, device=device, seed=seed,
                                     plot=os.path.join(args.out, f"{name}-seed{seed}.png") if args.plots else None)
            accs.append(history.epochs[-1].metric)
            seconds.append(t)
            to_target.append(seconds_to_reach(history, target))
        reached = [s for s in to_target if s is not None]
        rows.append({"model": name, "seed_accuracy": list(RECIPES[name]["seed_accuracy"]),
                     "accuracy": sum(accs) / len(accs), "accuracy_per_seed": accs,
                     "seconds_per_run": sum(seconds) / len(seconds),
                     "seconds_per_epoch": sum(seconds) / len(seconds) / len(history.epochs),
                     "seconds_to_seed_accuracy": sum(reached) / len(reached) if reached else None,
                     "runs_reaching_seed_accuracy": len(reached),
                     "backend": _backend_label(args.backend, device)})
        if args.json:  # after every model, so a run stopped by a time limit keeps those it finished
            write_json({"environment": environment(device), "seeds": args.seeds, "rows": rows}, args.json)
    print()
    print(format_zoo_table(rows))
    if args.json:
        print(f"\nwrote {args.json}")


def seconds_to_reach(history, target):
    """Training time until the first epoch whose valid metric reaches `target` (None if never)."""
    elapsed = 0.0
    for r in history.epochs:
        elapsed += r.seconds
        if r.metric >= target:
            return elapsed
    return None


def format_zoo_table(rows) -> str:
    """Markdown table: model, the two seed runs' final accuracy, ours (mean over seeds), times, backend."""
    lines = ["| model | seed accuracy (000 / 003) | hnrnn accuracy | wall time per run | per epoch "
             "| to the lower seed accuracy | backend |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["seed_accuracy"]
        reach = r.get("seconds_to_seed_accuracy")
        lines.append(f"| {r['model']} | {a:.4f} / {b:.4f} | {r['accuracy']:.4f} | "
                     f"{r['seconds_per_run']:.2f} s | {r['seconds_per_epoch']:.3f} s | "
                     f"{'never' if reach is None else f'{reach:.2f} s'} | {r['backend']} |")
    return "\n".join(lines)


def cmd_train(args):
    from hnrnn import distributed
    from hnrnn.data import from_text_file, human_numbers

    device = _device(args.device)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for it
        torch.use_deterministic_algorithms(True)
    if distributed.launched():
        device = distributed.init_from_env(device)
    data = from_text_file(args.text) if args.text else human_numbers()
    checkpoint = args.checkpoint or os.path.join(args.out, f"{args.model}.pt")
    plot = args.plot or os.path.join(args.out, f"{args.model}.png")
    history, seconds = train_model(
        args.model, data, backend=args.backend, device=device, seed=args.seed, epochs=args.epochs,
        max_lr=args.lr, pct_start=args.pct_start, bptt=args.bptt, bs=args.bs,
        checkpoint=checkpoint, resume=args.resume, plot=plot)
    if distributed.rank_and_world()[0] != 0:
        return  # rank 0 reports; every rank holds the same history
    print(f"\n{args.model}: final {history.metric_name} {history.epochs[-1].metric:.6f} "
          f"in {seconds:.1f} s; checkpoint {checkpoint}; plot {plot}")
    if args.json:
        write_json({"environment": environment(device), "model": args.model,
                    "epochs": [vars(r) for r in history.epochs]}, args.json)


def cmd_data(args):
    """The notebook's walk-through of the data and its batches."""
    from hnrnn.data import LMLoader, human_numbers

    d = human_numbers()
    print(f"train tokens: {len(d.train_ids)}   valid tokens: {len(d.valid_ids)}")
    print(f"vocab ({len(d.vocab)}): {' '.join(d.vocab)}")
    print("train text:", repr(d.textify(d.train_ids[:30])[:80]))
    valid = LMLoader(d.valid_ids, bs=64, bptt=70)
    print(f"\nbs=64 bptt=70: len(valid_dl) = {len(valid)}, 13017/70/64 = {13017 / 70 / 64:.6f}")
    (x1, y1), (x2, y2), (x3, y3) = list(valid)
    print("x1.numel()+x2.numel()+x3.numel() =", x1.numel() + x2.numel() + x3.numel())
    print("x1.shape, y1.shape =", tuple(x1.shape), tuple(y1.shape))
    print("x1[0] =", x1[0].tolist())
    print("y1[0] =", y1[0].tolist())
    for label, ids in [("x1[0]", x1[0]), ("y1[0]", y1[0]), ("x2[0]", x2[0]), ("x3[0]", x3[0]),
                       ("x1[1]", x1[1]), ("x2[1]", x2[1]), ("x3[1]", x3[1]), ("x3[-1]", x3[-1])]:
        print(f"\ntextify({label}): {d.textify(ids)}")
    print("\nshow_batch(Valid) after those three batches (the loader goes on to the next):")
    nxt = valid.batch(len(valid))[0]
    for i in range(5):
        print(f"{i}  {d.textify(nxt[i])}")
    print("\nbs=64 bptt=3, show_batch(Valid):")
    first = LMLoader(d.valid_ids, bs=64, bptt=3).batch(0)[0]
    for i in range(5):
        print(f"{i}  {d.textify(first[i])}")


def cmd_bench(args):
    from hnrnn.bench import run_suite, suites

    for suite in args.suites or suites():
        print(f"wrote {run_suite(suite, args.pytest_args, args.out, args.max_seconds)}")


def cmd_report(args):
    from hnrnn.report import README, update_charts, update_readme

    update_charts()
    changed = update_readme(args.readme or README)
    print(("updated " if changed else "already current: ") + (args.readme or README))


def build_parser() -> argparse.ArgumentParser:
    from hnrnn.zoo import MODELS

    backends = ["auto", "eager", "reference", "cpu", "triton", "cuda"]
    p = argparse.ArgumentParser(prog="hnrnn", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    z = sub.add_parser("zoo", help="train Model0..Model5 with the lesson's settings and print the comparison table")
    z.add_argument("--backend", choices=backends, default="auto",
                   help="auto: hnrnn's fastest fused kernels for the device; eager: the seed's plain PyTorch code")
    z.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    z.add_argument("--seeds", type=int, default=3, help="random seeds per model; the table shows the mean")
    z.add_argument("--models", nargs="+", choices=list(MODELS), help="a subset of the zoo")
    z.add_argument("--json", help="also write the table as JSON to this file")
    z.add_argument("--plots", action="store_true", help="save a PNG of each run's curves under --out")
    z.add_argument("--out", default=DEFAULT_RUNS, help="folder for plots")
    z.set_defaults(func=cmd_zoo)

    t = sub.add_parser("train", help="train one zoo model (the lesson's recipe unless overridden)")
    t.add_argument("--model", required=True, choices=list(MODELS))
    t.add_argument("--backend", choices=backends, default="auto")
    t.add_argument("--device", default="auto")
    t.add_argument("--text", help="train on your own text file instead of human numbers")
    t.add_argument("--epochs", type=int)
    t.add_argument("--lr", type=float, help="max learning rate of the one cycle")
    t.add_argument("--pct-start", type=float)
    t.add_argument("--bptt", type=int)
    t.add_argument("--bs", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=DEFAULT_RUNS, help="folder for the checkpoint and plot")
    t.add_argument("--checkpoint", help="checkpoint file (default OUT/MODEL.pt), written every epoch")
    t.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint (an error if it is missing or from another run)")
    t.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms: bitwise-reproducible runs and resumes")
    t.add_argument("--plot", help="PNG of the curves (default OUT/MODEL.png)")
    t.add_argument("--json", help="write the per-epoch table as JSON")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("data", help="print the notebook's walk-through of the data and batches")
    d.set_defaults(func=cmd_data)

    b = sub.add_parser("bench", help="run benchmark suites; write benchmarks/results/<device>/<suite>.json")
    b.add_argument("suites", nargs="*", help="suite names (benchmarks/bench_<name>.py); default all")
    b.add_argument("--out", help="results folder (default benchmarks/results/<device-slug>)")
    b.add_argument("--max-seconds", type=float,
                   help="time box per suite: cases not started by then are skipped, the rest is written")
    b.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[],
                   help="passed on to pytest, e.g. -k seed")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("report", help="regenerate the README's tables from benchmarks/results/")
    r.add_argument("--readme", help="README file to update (default: the repository's)")
    r.set_defaults(func=cmd_report)
    return p


def main(argv=None):
    from hnrnn.learner import CheckpointError
    from hnrnn.ops import BackendUnavailableError

    from hnrnn import distributed

    args = build_parser().parse_args(argv)
    if distributed.launched() and args.command != "train":
        print(f"hnrnn {args.command}: error: only `hnrnn train` runs under torchrun", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, CheckpointError, BackendUnavailableError) as e:
        # Bad user input (a text file, a checkpoint, a backend): one clear line, no traceback.
        print(f"hnrnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
