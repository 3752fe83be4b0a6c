"""Issue 2's accuracy bar: the mean final valid accuracy over 3 seeds, on the default (fused)
backend, lies inside the range of the two seed runs widened by 0.06 on each side."""
import pytest
import torch

from hnrnn.cli import train_model
from hnrnn.data import human_numbers

BARS = {"Model0": (0.29, 0.53), "Model1": (0.40, 0.53), "Model2": (0.21, 0.49),
        "Model3": (0.48, 0.61), "Model4": (0.51, 0.64), "Model5": (0.80, 0.90)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BARS))
def test_zoo_accuracy_bar(name):
    data = human_numbers()
    accs = [train_model(name, data, backend="auto", device=torch.device("cpu"), seed=seed,
                        verbose=False)[0].epochs[-1].metric for seed in range(3)]
    low, high = BARS[name]
    assert low <= sum(accs) / 3 <= high, f"{name}: mean accuracy {sum(accs) / 3:.4f} over seeds {accs}"
