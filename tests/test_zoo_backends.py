"""Every fused backend of the zoo agrees with the seed's eager code: outputs, every gradient,
running statistics, carried state; and trains to the same first-epoch losses."""
import pytest
import torch

from hnrnn.data import human_numbers
from hnrnn.learner import Learner
from hnrnn.zoo import MODELS, RECIPES

CPU_BACKENDS = ["reference", "cpu"]


def _pair(name, backend, dtype=torch.float64):
    torch.manual_seed(0)
    eager = MODELS[name](hidden_size=50, backend="eager").to(dtype)
    fused = MODELS[name](hidden_size=50, backend=backend).to(dtype)
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def check_backend_matches_eager(name, backend, atol=1e-9):
    eager, fused = _pair(name, backend)
    bptt = RECIPES[name]["bptt"]
    for training in (True, False):
        eager.train(training)
        fused.train(training)
        for step in range(2):  # two batches: the second starts from the carried state
            x = torch.randint(0, 39, (7, bptt))
            y = torch.randint(0, 39, (7, bptt))
            out_e, out_f = eager(x), fused(x)
            torch.testing.assert_close(out_f, out_e, atol=atol, rtol=0)
            if training:
                loss = RECIPES[name]["loss"]
                grads_e = torch.autograd.grad(loss(out_e, y), list(eager.parameters()))
                grads_f = torch.autograd.grad(loss(out_f, y), list(fused.parameters()))
                for (pname, _), ge, gf in zip(eager.named_parameters(), grads_e, grads_f):
                    torch.testing.assert_close(gf, ge, atol=atol, rtol=0, msg=f"grad of {pname}")
            for (bname, be), bf in zip(eager.named_buffers(), fused.buffers()):
                torch.testing.assert_close(bf, be, atol=atol, rtol=0, msg=f"buffer {bname}")
            if getattr(eager, "h", None) is not None:
                torch.testing.assert_close(fused.h, eager.h, atol=atol, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_backend_matches_eager(name, backend):
    check_backend_matches_eager(name, backend)


def _train(name, backend, epochs):
    r = RECIPES[name]
    torch.manual_seed(0)
    learn = Learner(MODELS[name](backend=backend), human_numbers(), r["loss"], r["metric"], bptt=r["bptt"],
                    verbose=False)
    return learn.fit_one_cycle(epochs or r["epochs"], r["max_lr"], pct_start=r["pct_start"]).epochs


@pytest.mark.parametrize("name", ["Model0", "Model1", "Model2", "Model3"])
def test_first_epoch_losses_match_eager(name):
    """Issue 3: first-epoch losses within 1e-4 at a fixed seed on CPU (float32), for the fused
    cell's C++ kernels and its pure-PyTorch reference alike."""
    want = _train(name, "eager", 1)[0]
    for backend in ("cpu", "reference"):
        got = _train(name, backend, 1)[0]
        assert abs(got.train_loss - want.train_loss) < 1e-4, backend
        assert abs(got.valid_loss - want.valid_loss) < 1e-4, backend


@pytest.mark.parametrize("name", ["Model0", "Model1", "Model2"])
def test_final_accuracy_matches_eager(name):
    """Issue 3: the whole recipe at a fixed seed ends at the seed loop's accuracy. (Model3's 20
    epochs at max_lr 3e-3 amplify float rounding into seed-sized differences, so it is held to
    the seeds' accuracy band in test_zoo_accuracy.py instead.)"""
    want, got = _train(name, "eager", None)[-1], _train(name, "cpu", None)[-1]
    assert abs(got.metric - want.metric) < 1e-3
    assert abs(got.valid_loss - want.valid_loss) < 1e-3
