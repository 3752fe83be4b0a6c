"""fit_one_cycle training with fastai v1's defaults, metrics, tables, plots and checkpoints.

fastai v1's Learner trains with Adam (betas 0.9/0.99; beta1 cycled as momentum) and decoupled
weight decay 0.01 on every parameter, under the one-cycle schedule: cosine warm-up from
max_lr/25 to max_lr over ``pct_start`` of the iterations, cosine annealing to max_lr/25e4,
momentum 0.95 -> 0.85 -> 0.95. That is torch.optim.AdamW + OneCycleLR with these settings.
The printed train_loss is fastai's smoothed loss (EMA 0.98, debiased) at the epoch's end.
"""
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

import torch

from hnrnn.data import LMLoader, TextData


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (truncated, corrupt, or another model's)."""


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    valid_loss: float
    metric: float
    seconds: float


@dataclass
class History:
    metric_name: str
    epochs: List[EpochRecord] = field(default_factory=list)
    batch_losses: List[float] = field(default_factory=list)  # smoothed, one per training batch


class SmoothLoss:
    """fastai's SmoothenValue: exponential moving average with bias correction."""

    def __init__(self, beta: float = 0.98):
        self.beta, self.n, self.mov_avg = beta, 0, 0.0

    def add(self, value: float) -> float:
        self.n += 1
        self.mov_avg = self.beta * self.mov_avg + (1 - self.beta) * value
        return self.mov_avg / (1 - self.beta ** self.n)


def format_seconds(s: float) -> str:
    return f"{int(s) // 60:02d}:{int(s) % 60:02d}"


class ProgressBar:
    """A one-line progress bar on stderr, only when it is a terminal."""

    def __init__(self, total: int, label: str):
        self.total, self.label = total, label
        self.enabled = sys.stderr.isatty()

    def update(self, done: int):
        if self.enabled:
            width = 30
            filled = width * done // self.total
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}")
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\r" + " " * (len(self.label) + 50) + "\r")
            sys.stderr.flush()


def _atomic_save(obj, path: str):
    """Write to a temporary file, then rename: a killed process never leaves half a checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Learner:
    """Trains a zoo model on a TextData's language-model streams."""

    def __init__(self, model: torch.nn.Module, data: TextData, loss_func: Callable, metric: Callable,
                 bs: int = 64, bptt: int = 70, device: Optional[torch.device] = None,
                 wd: float = 0.01, betas=(0.9, 0.99), metric_name: Optional[str] = None,
                 verbose: bool = True):
        self.device = torch.device(device or "cpu")
        self.model = model.to(self.device)
        self.data, self.loss_func, self.metric = data, loss_func, metric
        self.train_dl = LMLoader(data.train_ids, bs=bs, bptt=bptt)
        self.valid_dl = LMLoader(data.valid_ids, bs=bs, bptt=bptt)
        self.wd, self.betas = wd, betas
        self.history = History(metric_name or metric.__name__)
        self.verbose = verbose

    def _reset_state(self):
        if hasattr(self.model, "reset"):
            self.model.reset()

    def validate(self):
        """(mean loss, mean metric) over the validation stream, weighted by batch size."""
        self.model.eval()
        self._reset_state()
        losses, metrics, sizes = [], [], []
        with torch.no_grad():
            for x, y in self.valid_dl:
                x, y = x.to(self.device), y.to(self.device)
                pred = self.model(x)
                losses.append(self.loss_func(pred, y).item())
                metrics.append(self.metric(pred, y).item())
                sizes.append(x.shape[0])
        n = sum(sizes)
        return (sum(l * s for l, s in zip(losses, sizes)) / n,
                sum(m * s for m, s in zip(metrics, sizes)) / n)

    def _print(self, line: str):
        if self.verbose:
            print(line, flush=True)

    def print_header(self):
        self._print(f"{'epoch':<7}{'train_loss':<12}{'valid_loss':<12}{self.history.metric_name:<10}time")

    def print_record(self, r: EpochRecord):
        self._print(f"{r.epoch:<7}{r.train_loss:<12.6f}{r.valid_loss:<12.6f}{r.metric:<10.6f}"
                    f"{format_seconds(r.seconds)}")

    def fit_one_cycle(self, epochs: int, max_lr: float, pct_start: float = 0.3,
                      div_factor: float = 25.0, final_div: float = 1e4, moms=(0.95, 0.85),
                      checkpoint: Optional[str] = None, resume: bool = False,
                      plot: Optional[str] = None) -> History:
        """Train for `epochs` under the one-cycle schedule; checkpoint every epoch to `checkpoint`
        and, with `resume`, continue from it (model, optimizer, scheduler, epoch, RNG)."""
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        opt = torch.optim.AdamW(self.model.parameters(), lr=max_lr / div_factor,
                                betas=(moms[0], self.betas[1]), weight_decay=self.wd)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr, total_steps=epochs * len(self.train_dl), pct_start=pct_start,
            anneal_strategy="cos", cycle_momentum=True, base_momentum=moms[1], max_momentum=moms[0],
            div_factor=div_factor, final_div_factor=final_div)
        smooth = SmoothLoss()
        start = 0
        if resume and checkpoint and os.path.exists(checkpoint):
            start, smooth = self._load_checkpoint(checkpoint, opt, sched)
        self.print_header()
        for r in self.history.epochs:  # epochs restored from the checkpoint
            self.print_record(r)
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            self.model.train()
            self._reset_state()
            bar = ProgressBar(len(self.train_dl), f"epoch {epoch}")
            for i, (x, y) in enumerate(self.train_dl):
                x, y = x.to(self.device), y.to(self.device)
                loss = self.loss_func(self.model(x), y)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}, batch {i}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                self.history.batch_losses.append(smooth.add(loss.item()))
                bar.update(i + 1)
            bar.close()
            valid_loss, metric = self.validate()
            record = EpochRecord(epoch, self.history.batch_losses[-1], valid_loss, metric,
                                 time.perf_counter() - t0)
            self.history.epochs.append(record)
            self.print_record(record)
            if checkpoint:
                self._save_checkpoint(checkpoint, epoch + 1, opt, sched, smooth)
        if plot:
            save_plot(self.history, plot)
        return self.history

    def _save_checkpoint(self, path, next_epoch, opt, sched, smooth):
        _atomic_save({
            "model": self.model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": next_epoch, "smooth": vars(smooth),
            "history": {"metric_name": self.history.metric_name,
                        "epochs": [asdict(r) for r in self.history.epochs],
                        "batch_losses": self.history.batch_losses},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }, path)

    def _load_checkpoint(self, path, opt, sched):
        try:
            ck = torch.load(path, map_location=self.device, weights_only=False)
            self.model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
        except Exception as e:  # a truncated file, another model's checkpoint, ...
            raise CheckpointError(f"cannot resume from checkpoint {path}: {e}") from e
        torch.set_rng_state(ck["rng"].cpu())
        if ck.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ck["cuda_rng"]])
        smooth = SmoothLoss()
        smooth.__dict__.update(ck["smooth"])
        h = ck["history"]
        self.history = History(h["metric_name"], [EpochRecord(**r) for r in h["epochs"]],
                               list(h["batch_losses"]))
        return ck["epoch"], smooth


def save_plot(history: History, path: str) -> bool:
    """PNG of the smoothed training loss per batch and the validation loss and metric per epoch.
    Returns False (with a note on stderr) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed; no plot written to {path}", file=sys.stderr)
        return False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    n_batches = len(history.batch_losses)
    n_epochs = max(len(history.epochs), 1)
    per_epoch = n_batches / n_epochs
    ax_loss.plot(range(1, n_batches + 1), history.batch_losses, label="train (smoothed)")
    ax_loss.plot([per_epoch * (r.epoch + 1) for r in history.epochs],
                 [r.valid_loss for r in history.epochs], "o-", label="valid")
    ax_loss.set_xlabel("batches")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_metric.plot([r.epoch for r in history.epochs], [r.metric for r in history.epochs], "o-")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(history.metric_name)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
