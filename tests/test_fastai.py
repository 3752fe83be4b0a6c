"""A zoo model built on hnrnn's modules trains inside a fastai v2 Learner (fit_one_cycle), exactly
as the seed's eager model does: same data, same initial weights, the same per-epoch losses and
metric to float tolerance, and it learns. Runs when the optional extra hnrnn[fastai] is installed.
"""
import pytest
import torch

pytest.importorskip("fastai", reason="needs the optional extra hnrnn[fastai]")
from fastai.callback.rnn import ModelResetter  # noqa: E402
from fastai.callback.schedule import fit_one_cycle  # noqa: E402,F401  (patches Learner.fit_one_cycle)
from fastai.data.core import DataLoaders  # noqa: E402
from fastai.learner import Learner  # noqa: E402

from hnrnn.data import LMLoader, human_numbers  # noqa: E402
from hnrnn.zoo import MODELS, RECIPES  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # the seed's torch.nn.GRU: see tests/conftest.py


def _rows(ids, bs, bptt):
    """hnrnn's LMLoader batches as a dataset of (x, y) rows: fastai's DataLoader, unshuffled,
    with the same batch size, gives back exactly those batches."""
    return [(x[i], y[i]) for x, y in LMLoader(ids, bs, bptt) for i in range(bs)]


def _fit(name, backend, data, state, epochs):
    r = RECIPES[name]
    bs = 64
    dls = DataLoaders.from_dsets(_rows(data.train_ids, bs, r["bptt"]), _rows(data.valid_ids, bs, r["bptt"]),
                                 bs=bs, shuffle=False, drop_last=True, num_workers=0, device="cpu")
    model = MODELS[name](vocab_size=len(data.vocab), backend=backend)
    model.load_state_dict(state)
    learn = Learner(dls, model, loss_func=r["loss"], metrics=r["metric"], cbs=ModelResetter())
    torch.manual_seed(0)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, r["max_lr"], pct_start=r["pct_start"])
    return learn.recorder.values  # per epoch: train_loss, valid_loss, metric


@pytest.mark.parametrize("name,backend", [("Model3", "cpu"), ("Model5", "cpu")])
def test_zoo_model_trains_in_fastai_learner(name, backend):
    data = human_numbers()
    torch.manual_seed(0)
    state = MODELS[name](vocab_size=len(data.vocab), backend="eager").state_dict()
    ours = _fit(name, backend, data, state, epochs=2)
    seed = _fit(name, "eager", data, state, epochs=2)
    assert len(ours) == len(seed) == 2
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(seed), atol=1e-4, rtol=1e-4)
    # it learned: from ln(39) = 3.66 at random init, and 1/39 accuracy by chance
    assert ours[-1][1] < 2.5 and ours[-1][2] > 0.25, f"valid loss, accuracy after 2 epochs: {ours[-1][1:]}"
