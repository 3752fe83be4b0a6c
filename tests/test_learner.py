"""fit_one_cycle: fastai v1's schedule, smoothed loss, checkpoints and resume."""
import math

import pytest
import torch

from hnrnn.data import human_numbers
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


def test_corrupt_checkpoint_is_a_clear_error(data, tmp_path):
    ck = tmp_path / "bad.pt"
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot resume"):
        _learner(data).fit_one_cycle(1, 1e-3, checkpoint=str(ck), resume=True)


def test_checkpoint_of_another_model_is_a_clear_error(data, tmp_path):
    ck = str(tmp_path / "m5.pt")
    _learner(data, "Model2", bptt=20).fit_one_cycle(1, 1e-3, checkpoint=ck)
    with pytest.raises(CheckpointError, match="cannot resume"):
        _learner(data, "Model5", bptt=20).fit_one_cycle(1, 1e-3, checkpoint=ck, resume=True)


def test_plot_written(data, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    _learner(data).fit_one_cycle(1, 1e-3, plot=str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
