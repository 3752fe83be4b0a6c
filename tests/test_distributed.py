"""Data-parallel training (hnrnn.distributed): 2 CPU processes over gloo on loopback compute what
one process computes on the combined batch: synchronised BatchNorm statistics (forward and
backward), each rank's share of the rows, hidden states per rank, losses and metrics averaged.

The workers only compute and save; every comparison is made here, against a single-process
run of the same model (float64, so float rounding cannot hide a wrong statistic)."""
import importlib.util
import json
import os
from datetime import timedelta
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.testing import assert_close

from hnrnn.data import LMLoader, TextData, numbers_text
from hnrnn.distributed import SyncBatchNormFlat
from hnrnn.learner import Learner
from hnrnn.zoo import MODELS, RECIPES

WORLD, BS, EPOCHS = 2, 16, 2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data():
    return TextData(numbers_text(1, 300), numbers_text(301, 360))


def _bptt(name):
    return 3 if RECIPES[name]["bptt"] == 3 else 6


def _learner(name, data):
    torch.manual_seed(0)
    model = MODELS[name](vocab_size=len(data.vocab)).double()
    r = RECIPES[name]
    return Learner(model, data, r["loss"], r["metric"], bs=BS, bptt=_bptt(name), verbose=False)


def _state(model):
    return None if getattr(model, "h", None) is None else model.h.clone()


def _two_backward_passes(name, model, loader):
    """Gradients (accumulated, no step) and buffers after two batches: the second one starts
    from the state the first one carried."""
    for k in range(2):
        x, y = loader.batch(k)
        RECIPES[name]["loss"](model(x), y).backward()


def _sync_bn_case(rank):
    """SyncBatchNormFlat on this rank's rows of (12, 5) and (4, 3, 5) channels-last inputs."""
    out = []
    for shape in [(12, 5), (4, 3, 5)]:
        gen = torch.Generator().manual_seed(len(shape))
        x, g = torch.randn(*shape, generator=gen, dtype=torch.float64), torch.randn(*shape, generator=gen, dtype=torch.float64)
        rows = slice(rank * shape[0] // WORLD, (rank + 1) * shape[0] // WORLD)
        bn = SyncBatchNormFlat(5).double()
        with torch.no_grad():
            bn.weight.copy_(torch.rand(5, generator=gen, dtype=torch.float64) + 0.5)
            bn.bias.copy_(torch.randn(5, generator=gen, dtype=torch.float64))
        xr = x[rows].clone().requires_grad_()
        y = bn(xr)
        (y * g[rows]).sum().backward()
        bn.eval()
        out.append({"y": y.detach(), "dx": xr.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
                    "rm": bn.running_mean.clone(), "rv": bn.running_var.clone(), "eval": bn(x[rows]).detach()})
    return out


def _worker(rank, init, out_dir):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    torch.set_num_threads(1)
    # A timeout turns a mismatched collective into an error instead of a hang.
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    try:
        data = _data()
        res = {"sync_bn": _sync_bn_case(rank)}
        for name in MODELS:
            step = _learner(name, data)
            _two_backward_passes(name, step.net, step.train_dl)
            learn = _learner(name, data)
            history = learn.fit_one_cycle(EPOCHS, RECIPES[name]["max_lr"])
            res[name] = {
                "grads": {k: p.grad for k, p in step.model.named_parameters()},
                "buffers": dict(step.model.named_buffers()), "step_state": _state(step.model),
                "weights": learn.model.state_dict(), "state": _state(learn.model),
                "epochs": [vars(r) for r in history.epochs], "batch_losses": history.batch_losses}
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(f"file://{d}/rendezvous", str(d)), nprocs=WORLD)
    return [torch.load(d / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def data():
    return _data()


def _rows(rank):
    return slice(rank * BS // WORLD, (rank + 1) * BS // WORLD)


def _assert_state_per_rank(single_h, ranks_h, **tol):
    """Each rank carries the single-process hidden state of its own rows."""
    if single_h is None:
        assert all(h is None for h in ranks_h)
        return
    batch_dim = single_h.dim() - 2  # (B, H) for Model3, (layers, B, H) for the RNN modules
    assert_close(torch.cat(ranks_h, batch_dim), single_h, **tol)


def test_loaders_split_the_rows_between_ranks(data):
    full = LMLoader(data.train_ids, bs=BS, bptt=5)
    shards = [LMLoader(data.train_ids, bs=BS, bptt=5, rank=r, world_size=WORLD) for r in range(WORLD)]
    assert all(len(s) == len(full) for s in shards)
    for k in range(len(full)):
        for xy, parts in zip(full.batch(k), zip(*(s.batch(k) for s in shards))):
            assert torch.equal(torch.cat(parts), xy)
    with pytest.raises(ValueError, match="bs=7 does not split evenly over 2 processes"):
        LMLoader(data.train_ids, bs=7, bptt=5, rank=0, world_size=2)


def test_sync_batchnorm_equals_batchnorm_over_the_whole_batch(ranks):
    for i, shape in enumerate([(12, 5), (4, 3, 5)]):
        gen = torch.Generator().manual_seed(len(shape))
        x, g = torch.randn(*shape, generator=gen, dtype=torch.float64), torch.randn(*shape, generator=gen, dtype=torch.float64)
        bn = nn.BatchNorm1d(5).double()
        with torch.no_grad():
            bn.weight.copy_(torch.rand(5, generator=gen, dtype=torch.float64) + 0.5)
            bn.bias.copy_(torch.randn(5, generator=gen, dtype=torch.float64))
        x.requires_grad_()
        y = bn(x.reshape(-1, 5)).view(shape)
        (y * g).sum().backward()
        got = [r["sync_bn"][i] for r in ranks]
        assert_close(torch.cat([o["y"] for o in got]), y.detach(), rtol=1e-12, atol=1e-12)
        # Each rank's dx is that of the sum of all ranks' losses; dw, db its rows' share.
        assert_close(torch.cat([o["dx"] for o in got]), x.grad, rtol=1e-12, atol=1e-12)
        assert_close(sum(o["dw"] for o in got), bn.weight.grad, rtol=1e-12, atol=1e-12)
        assert_close(sum(o["db"] for o in got), bn.bias.grad, rtol=1e-12, atol=1e-12)
        for o in got:  # running statistics: unbiased variance of the whole batch, on every rank
            assert_close(o["rm"], bn.running_mean, rtol=1e-12, atol=1e-12)
            assert_close(o["rv"], bn.running_var, rtol=1e-12, atol=1e-12)
        bn.eval()
        assert_close(torch.cat([o["eval"] for o in got]), bn(x.detach().reshape(-1, 5)).view(shape),
                     rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_ddp_gradients_equal_the_single_process_batch(ranks, data, name):
    """Two batches forward and backward: every gradient, running statistic and carried state."""
    torch.manual_seed(0)
    single = MODELS[name](vocab_size=len(data.vocab)).double()
    _two_backward_passes(name, single, LMLoader(data.train_ids, bs=BS, bptt=_bptt(name)))
    for r in ranks:
        for k, p in single.named_parameters():
            assert_close(r[name]["grads"][k], p.grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"{k}: {m}")
        for k, b in single.named_buffers():
            assert_close(r[name]["buffers"][k], b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{k}: {m}")
    _assert_state_per_rank(_state(single), [r[name]["step_state"] for r in ranks], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_ddp_training_equals_single_process(ranks, data, name):
    """fit_one_cycle for two epochs at the recipe's learning rate: weights, the per-epoch table,
    the smoothed losses and the carried states. (At larger rates Model1's in-recurrence BN over
    few rows amplifies rounding: even the single-process fused and eager paths drift apart.)"""
    learn = _learner(name, data)
    history = learn.fit_one_cycle(EPOCHS, RECIPES[name]["max_lr"])
    tol = dict(rtol=1e-9, atol=1e-10)
    for r in ranks:
        for k, v in learn.model.state_dict().items():
            assert_close(r[name]["weights"][k], v, **tol, msg=lambda m: f"{k}: {m}")
        for got, want in zip(r[name]["epochs"], history.epochs):
            assert got["epoch"] == want.epoch
            assert got["train_loss"] == pytest.approx(want.train_loss, rel=1e-9)
            assert got["valid_loss"] == pytest.approx(want.valid_loss, rel=1e-9)
            assert got["metric"] == pytest.approx(want.metric, rel=1e-6)  # the metrics average in float32
        assert len(r[name]["epochs"]) == EPOCHS
        assert r[name]["batch_losses"] == pytest.approx(history.batch_losses, rel=1e-9)
    # The ranks stay identical: the same averaged gradients, the same synchronised statistics.
    for k, v in ranks[0][name]["weights"].items():
        assert torch.equal(v, ranks[1][name]["weights"][k]), k
    _assert_state_per_rank(_state(learn.model), [r[name]["state"] for r in ranks], **tol)


def test_torchrun_cli_matches_single_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m hnrnn train` against `hnrnn train` (float32): rank 0
    alone prints, writes the table and the checkpoint; they match the single-process run's."""
    text = tmp_path / "numbers.txt"
    text.write_text("\n".join(numbers_text(1, 250).split(", ")))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    env.pop("WORLD_SIZE", None)
    args = ["-m", "hnrnn", "train", "--model", "Model3", "--device", "cpu", "--epochs", "2", "--bs", "8",
            "--bptt", "5", "--lr", "1e-3", "--text", str(text)]
    runs = {}
    for kind, launcher in [("single", []),
                           ("ddp", ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"])]:
        out = tmp_path / kind
        p = subprocess.run([sys.executable, *launcher, *args, "--out", str(out), "--json", str(out / "t.json")],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        runs[kind] = (p.stdout, json.loads((out / "t.json").read_text())["epochs"],
                      torch.load(out / "Model3.pt", weights_only=True))
        # no leftovers; the plot only where matplotlib is installed (save_plot skips it otherwise)
        plot = ["Model3.png"] if importlib.util.find_spec("matplotlib") else []
        assert sorted(os.listdir(out)) == plot + ["Model3.pt", "t.json"]
    (out1, table1, ck1), (out2, table2, ck2) = runs["single"], runs["ddp"]
    for printed in (out1, out2):  # one table, printed by rank 0 only under torchrun
        assert printed.count("train_loss") == 1 and printed.count("Model3: final accuracy") == 1
    assert [r["epoch"] for r in table2] == [0, 1]
    for a, b in zip(table1, table2):
        for col in ("train_loss", "valid_loss", "metric"):
            assert b[col] == pytest.approx(a[col], rel=1e-3, abs=1e-4), col
    for k, v in ck1["model"].items():
        assert_close(ck2["model"][k], v, rtol=1e-3, atol=1e-4, msg=lambda m: f"{k}: {m}")
    assert ck2["epoch"] == ck1["epoch"] == 2
