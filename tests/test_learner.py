"""fit_one_cycle: fastai v1's schedule, smoothed loss, checkpoints and resume."""
import math
import os

import pytest
import torch

from hnrnn.data import TextData, human_numbers, numbers_text
from hnrnn.learner import CheckpointError, Learner, SmoothLoss
from hnrnn.zoo import MODELS, RECIPES


@pytest.fixture(scope="module")
def data():
    return human_numbers()


def _learner(data, name="Model1", backend="eager", bptt=None):
    r = RECIPES[name]
    return Learner(MODELS[name](backend=backend), data, r["loss"], r["metric"], bptt=bptt or r["bptt"], verbose=False)


def test_one_cycle_schedule_is_fastai_v1(data):
    learn = _learner(data)
    lrs, moms = [], []
    opt_step = torch.optim.AdamW.step

    def record(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        moms.append(self.param_groups[0]["betas"][0])
        return opt_step(self, *a, **k)

    torch.optim.AdamW.step = record
    try:
        learn.fit_one_cycle(2, 1e-3, pct_start=0.25)
    finally:
        torch.optim.AdamW.step = opt_step
    n = 2 * len(learn.train_dl)
    peak = int(0.25 * n) - 1
    assert math.isclose(lrs[0], 1e-3 / 25, rel_tol=1e-9)
    assert math.isclose(max(lrs), 1e-3, rel_tol=1e-3) and abs(lrs.index(max(lrs)) - peak) <= 1
    assert math.isclose(lrs[-1], 1e-3 / 25e4, rel_tol=0.05)
    assert math.isclose(moms[0], 0.95) and math.isclose(min(moms), 0.85, rel_tol=1e-3)
    assert math.isclose(moms[-1], 0.95, rel_tol=1e-3)
    opt = torch.optim.AdamW([torch.zeros(1)], weight_decay=0.01)
    assert opt.defaults["weight_decay"] == 0.01


def test_smooth_loss_is_debiased_ema():
    s = SmoothLoss(0.98)
    assert s.add(2.0) == pytest.approx(2.0)
    assert s.add(4.0) == pytest.approx((0.98 * 0.02 * 2 + 0.02 * 4) / (1 - 0.98 ** 2))


def test_training_reduces_loss_and_prints_table(data, capsys):
    r = RECIPES["Model1"]
    learn = Learner(MODELS["Model1"](backend="eager"), data, r["loss"], r["metric"], bptt=3)
    h = learn.fit_one_cycle(1, 1e-2)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["epoch", "train_loss", "valid_loss", "acc4", "time"]
    assert out[1].split()[0] == "0" and len(out[1].split()) == 5
    assert h.epochs[0].valid_loss < math.log(39)  # better than uniform guessing


def test_resume_gives_the_same_weights(data, tmp_path):
    torch.manual_seed(1)
    straight = _learner(data, "Model3", bptt=20)
    straight.fit_one_cycle(2, 3e-3)

    # Die right after the first epoch's checkpoint is written, then resume in a fresh learner.
    ck = str(tmp_path / "k.pt")
    torch.manual_seed(1)
    killed = _learner(data, "Model3", bptt=20)
    save = killed._save_checkpoint

    def save_then_die(*a, **k):
        save(*a, **k)
        raise KeyboardInterrupt

    killed._save_checkpoint = save_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(2, 3e-3, checkpoint=ck)
    assert torch.load(ck, weights_only=False)["epoch"] == 1
    torch.manual_seed(123)  # the RNG state must come from the checkpoint
    resumed = _learner(data, "Model3", bptt=20)
    h = resumed.fit_one_cycle(2, 3e-3, checkpoint=ck, resume=True)
    assert [r.epoch for r in h.epochs] == [0, 1]
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert h.epochs[-1].valid_loss == straight.history.epochs[-1].valid_loss


@pytest.fixture(scope="module")
def small():
    return TextData(numbers_text(1, 200), numbers_text(201, 240))


def _small_learner(data, name="Model2", **model_kw):
    r = RECIPES[name]
    model = MODELS[name](vocab_size=len(data.vocab), backend="eager", **model_kw)
    return Learner(model, data, r["loss"], r["metric"], bs=8, bptt=5, verbose=False)


@pytest.fixture(scope="module")
def model2_checkpoint(small, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck") / "model2.pt"
    _small_learner(small).fit_one_cycle(1, 1e-3, checkpoint=str(ck))
    return ck


def _corrupt(how):
    def write(ck, path):
        path.write_bytes(how(ck.read_bytes()))
        return path
    return write


# (what the checkpoint file is, the run that resumes from it, what the error must say)
BAD_CHECKPOINTS = {
    "missing": (lambda ck, path: path, {}, "checkpoint .*missing.pt does not exist"),
    "random bytes": (_corrupt(lambda b: os.urandom(len(b))), {}, "not a readable checkpoint"),
    "truncated": (_corrupt(lambda b: b[: len(b) // 2]), {}, "not a readable checkpoint"),
    "empty": (_corrupt(lambda b: b""), {}, "not a readable checkpoint"),
    "a bare tensor": (lambda ck, path: torch.save(torch.zeros(3), path) or path, {},
                      "not an hnrnn training checkpoint"),
    "another model": (lambda ck, path: ck, dict(name="Model5"), "it holds a Model2, this run trains a Model5"),
    "another vocab": (lambda ck, path: ck, dict(data=TextData(numbers_text(1, 30), numbers_text(31, 40))),
                      r"another vocab \(38 tokens; this data has 20\)"),
    "another hidden size": (lambda ck, path: ck, dict(hidden_size=32),
                            r"i_h.weight has shape \(38, 64\) there and \(38, 32\) in this Model2"),
    "a damaged optimizer state": (lambda ck, path: torch.save({**torch.load(ck, weights_only=True), "optimizer": "junk"},
                                                               path) or path, {}, "cannot resume from checkpoint .*bad.pt: "),
    "other settings": (lambda ck, path: ck, dict(epochs=2, max_lr=3e-3),
                       "run with epochs=1, max_lr=0.001; this run has epochs=2, max_lr=0.003"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_a_clear_error(small, model2_checkpoint, tmp_path, case):
    make, run, message = BAD_CHECKPOINTS[case]
    path = make(model2_checkpoint, tmp_path / ("missing.pt" if case == "missing" else "bad.pt"))
    before = path.read_bytes() if path.exists() else None
    learn = _small_learner(run.get("data", small), run.get("name", "Model2"),
                           **({"hidden_size": run["hidden_size"]} if "hidden_size" in run else {}))
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        learn.fit_one_cycle(run.get("epochs", 1), run.get("max_lr", 1e-3), checkpoint=str(path), resume=True)
    # Nothing changed: neither the file nor the model it was to be loaded into.
    assert (path.read_bytes() if path.exists() else None) == before
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_plot_written(data, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    _learner(data).fit_one_cycle(1, 1e-3, plot=str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
