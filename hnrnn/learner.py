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
from hnrnn.distributed import all_reduce_sum, barrier, rank_and_world, wrap

# Test hook: "EPOCH:BATCH:FILE" makes training write FILE and wait before that batch, so a test
# can SIGKILL it mid-epoch at a known point.
PAUSE_ENV = "HNRNN_PAUSE_AT"
_CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "epoch", "smooth", "history", "rng", "settings"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: missing, truncated, corrupt, or written by
    another model, vocab, hidden size or training setting."""


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


def _fused_adamw_supported(params) -> bool:
    return all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)


def atomic_write(path: str, write: Callable, binary: bool = True):
    """write(file) into a temporary file, then rename it to ``path``: a killed or failing write
    never leaves half a file there (the previous one stays until the new one is complete), nor
    the temporary file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_save(obj, path: str):
    """torch.save through atomic_write: never half a checkpoint at ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _pause_point():
    """(epoch, batch, file) from the HNRNN_PAUSE_AT test hook, or None."""
    value = os.environ.get(PAUSE_ENV)
    if not value:
        return None
    epoch, batch, path = value.split(":", 2)
    return int(epoch), int(batch), path


class Learner:
    """Trains a zoo model on a TextData's language-model streams.

    Launched by torchrun (hnrnn.distributed.init_from_env done), each rank reads its share of
    the ``bs`` rows, trains a DistributedDataParallel copy with synchronised BatchNorm, and
    losses and metrics are averaged over ranks, so every rank's history equals the
    single-process one; only rank 0 prints, plots and writes checkpoints.
    """

    def __init__(self, model: torch.nn.Module, data: TextData, loss_func: Callable, metric: Callable,
                 bs: int = 64, bptt: int = 70, device: Optional[torch.device] = None,
                 wd: float = 0.01, betas=(0.9, 0.99), metric_name: Optional[str] = None,
                 verbose: bool = True):
        self.device = torch.device(device or "cpu")
        self.rank, self.world_size = rank_and_world()
        self.data, self.loss_func, self.metric = data, loss_func, metric
        self.train_dl = LMLoader(data.train_ids, bs=bs, bptt=bptt, rank=self.rank, world_size=self.world_size)
        self.valid_dl = LMLoader(data.valid_ids, bs=bs, bptt=bptt, rank=self.rank, world_size=self.world_size)
        self.model = model.to(self.device)
        self.net = wrap(self.model, self.device)  # what trains: DDP under torchrun, else the model
        self.wd, self.betas = wd, betas
        self.history = History(metric_name or metric.__name__)
        self.verbose = verbose and self.rank == 0

    def _mean_over_ranks(self, loss: torch.Tensor) -> float:
        """The batch's loss over all ranks' rows (equal shares: the mean of the ranks' means)."""
        return all_reduce_sum(loss.detach().double().reshape(1)).item() / self.world_size

    def _reset_state(self):
        if hasattr(self.model, "reset"):
            self.model.reset()

    def validate(self):
        """(mean loss, mean metric) over the validation stream, weighted by batch size."""
        self.model.eval()
        self._reset_state()
        totals = torch.zeros(3, dtype=torch.float64)  # loss * rows, metric * rows, rows
        with torch.no_grad():
            for x, y in self.valid_dl:
                x, y = x.to(self.device), y.to(self.device)
                pred = self.model(x)
                n = x.shape[0]
                totals += torch.tensor([self.loss_func(pred, y).item() * n, self.metric(pred, y).item() * n, n],
                                       dtype=torch.float64)
        loss, metric, n = all_reduce_sum(totals.to(self.device)).tolist()
        return loss / n, metric / n

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
        and, with `resume`, continue from it (model, optimizer, scheduler, smoothed loss, history,
        RNG) at the start of the epoch after it: the run ends with the weights an uninterrupted
        run would have. Resuming needs the same model, vocab and settings (CheckpointError)."""
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        if resume and not checkpoint:
            raise ValueError("resume needs a checkpoint file to resume from")
        settings = dict(model=type(self.model).__name__, vocab=list(self.data.vocab), epochs=epochs,
                        max_lr=max_lr, pct_start=pct_start, div_factor=div_factor, final_div=final_div,
                        moms=list(moms), wd=self.wd, betas=list(self.betas), bs=self.train_dl.bs,
                        bptt=self.train_dl.bptt)
        # fused: one kernel per step for all parameters instead of ~10 small ops per parameter
        # (at the lesson's sizes the for-loop AdamW took a third of each batch's time)
        params = list(self.model.parameters())
        opt = torch.optim.AdamW(params, lr=max_lr / div_factor, betas=(moms[0], self.betas[1]),
                                weight_decay=self.wd, fused=_fused_adamw_supported(params))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr, total_steps=epochs * len(self.train_dl), pct_start=pct_start,
            anneal_strategy="cos", cycle_momentum=True, base_momentum=moms[1], max_momentum=moms[0],
            div_factor=div_factor, final_div_factor=final_div)
        smooth = SmoothLoss()
        start = 0
        if resume:
            start, smooth = self._load_checkpoint(checkpoint, opt, sched, settings)
        pause = _pause_point()
        self.print_header()
        for r in self.history.epochs:  # epochs restored from the checkpoint
            self.print_record(r)
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            self.model.train()
            self._reset_state()
            bar = ProgressBar(len(self.train_dl), f"epoch {epoch}")
            for i, (x, y) in enumerate(self.train_dl):
                if pause and pause[:2] == (epoch, i):
                    open(pause[2], "w").close()
                    time.sleep(600)
                x, y = x.to(self.device), y.to(self.device)
                loss = self.loss_func(self.net(x), y)
                value = self._mean_over_ranks(loss)  # the same on every rank: all stop together
                if not math.isfinite(value):
                    raise FloatingPointError(f"training loss became {value} at epoch {epoch}, batch {i}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                self.history.batch_losses.append(smooth.add(value))
                bar.update(i + 1)
            bar.close()
            valid_loss, metric = self.validate()
            record = EpochRecord(epoch, self.history.batch_losses[-1], valid_loss, metric,
                                 time.perf_counter() - t0)
            self.history.epochs.append(record)
            self.print_record(record)
            if checkpoint:
                if self.rank == 0:
                    self._save_checkpoint(checkpoint, epoch + 1, opt, sched, smooth, settings)
                barrier(self.device)  # no rank runs ahead of a checkpoint being written
        if plot and self.rank == 0:
            save_plot(self.history, plot)
        return self.history

    def _save_checkpoint(self, path, next_epoch, opt, sched, smooth, settings):
        _atomic_save({
            "model": self.model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": next_epoch, "smooth": vars(smooth),
            "settings": settings,
            "history": {"metric_name": self.history.metric_name,
                        "epochs": [asdict(r) for r in self.history.epochs],
                        "batch_losses": self.history.batch_losses},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }, path)

    def _load_checkpoint(self, path, opt, sched, settings):
        if not os.path.exists(path):
            raise CheckpointError(f"cannot resume: checkpoint {path} does not exist")
        try:
            # weights_only: tensors and plain containers only, no code runs from the file.
            ck = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:
            first_line = (str(e).splitlines() or [""])[0]
            raise CheckpointError(f"cannot resume from checkpoint {path}: not a readable checkpoint "
                                  f"(truncated or corrupt?): {type(e).__name__}: {first_line}") from e
        try:
            _check_checkpoint(ck, path, self.model, settings)
            opt.load_state_dict(ck["optimizer"])  # these two first: a failure leaves the model as it was
            sched.load_state_dict(ck["scheduler"])
            self.model.load_state_dict(ck["model"])
            torch.set_rng_state(ck["rng"].cpu())
            if ck.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in ck["cuda_rng"]])
            smooth = SmoothLoss()
            smooth.__dict__.update(ck["smooth"])
            h = ck["history"]
            self.history = History(h["metric_name"], [EpochRecord(**r) for r in h["epochs"]],
                                   list(h["batch_losses"]))
            return ck["epoch"], smooth
        except CheckpointError:
            raise
        except Exception as e:  # a damaged structure the checks did not foresee
            raise CheckpointError(f"cannot resume from checkpoint {path}: {type(e).__name__}: {e}") from e


def _check_checkpoint(ck, path, model, settings):
    """A CheckpointError naming what differs between checkpoint ``ck`` and this run."""
    def fail(why):
        raise CheckpointError(f"cannot resume from checkpoint {path}: {why}")

    if not isinstance(ck, dict) or not _CHECKPOINT_KEYS <= set(ck):
        fail("not an hnrnn training checkpoint (missing " +
             (", ".join(sorted(_CHECKPOINT_KEYS - set(ck))) if isinstance(ck, dict) else "everything") + ")")
    theirs = ck["settings"]
    if theirs["model"] != settings["model"]:
        fail(f"it holds a {theirs['model']}, this run trains a {settings['model']}")
    if theirs["vocab"] != settings["vocab"]:
        n_theirs, n_ours = len(theirs["vocab"]), len(settings["vocab"])
        fail(f"it was trained on another vocab ({n_theirs} tokens; this data has {n_ours}"
             f"{', the same number but other tokens' if n_theirs == n_ours else ''})")
    ours = model.state_dict()
    if set(ck["model"]) != set(ours):
        fail(f"its {settings['model']} has other parameters (missing: {sorted(set(ours) - set(ck['model']))}, "
             f"unexpected: {sorted(set(ck['model']) - set(ours))})")
    for k, v in ours.items():
        if ck["model"][k].shape != v.shape:
            fail(f"{k} has shape {tuple(ck['model'][k].shape)} there and {tuple(v.shape)} in this "
                 f"{settings['model']} (another hidden or vocab size)")
    differ = [k for k in settings if k not in ("model", "vocab") and theirs.get(k) != settings[k]]
    if differ:
        fail("it was written by a run with " + ", ".join(f"{k}={theirs.get(k)}" for k in differ) +
             "; this run has " + ", ".join(f"{k}={settings[k]}" for k in differ) +
             " (resume with the same settings)")


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
