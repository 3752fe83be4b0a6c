"""The zoo: the seed's models, parameter names, state handling, and every backend agreeing with
the seed's eager code (outputs, losses, gradients, running statistics)."""
import pytest
import torch

from hnrnn.zoo import MODELS, RECIPES

SEED_KEYS = {
    "Model0": ["i_h.weight", "h_h.weight", "h_h.bias", "h_o.weight", "h_o.bias", "bn.weight", "bn.bias",
               "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"],
    "Model4": ["i_h.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
               "h_o.weight", "h_o.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
               "bn.num_batches_tracked"],
}
SEED_KEYS["Model1"] = SEED_KEYS["Model2"] = SEED_KEYS["Model3"] = SEED_KEYS["Model0"]
SEED_KEYS["Model5"] = SEED_KEYS["Model4"][:5] + [k.replace("l0", "l1") for k in SEED_KEYS["Model4"][1:5]] \
    + SEED_KEYS["Model4"][5:]


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_names_are_the_seeds(name):
    assert list(MODELS[name](backend="eager").state_dict()) == SEED_KEYS[name]


@pytest.mark.parametrize("name", list(MODELS))
def test_output_shapes(name):
    x = torch.randint(0, 39, (5, RECIPES[name]["bptt"]))
    out = MODELS[name](backend="eager")(x)
    expected = (5, 39) if name in ("Model0", "Model1") else (5, x.shape[1], 39)
    assert out.shape == expected


def test_model0_reads_only_three_tokens():
    m = MODELS["Model0"](backend="eager").eval()
    x = torch.randint(0, 39, (4, 6))
    y = x.clone()
    y[:, 3:] = (y[:, 3:] + 1) % 39
    assert torch.equal(m(x), m(y))


@pytest.mark.parametrize("name", ["Model3", "Model4", "Model5"])
def test_state_is_carried_detached_reset_and_follows_batch_size(name):
    m = MODELS[name](backend="eager")
    x = torch.randint(0, 39, (4, 5))
    first = m(x)
    assert m.h is not None and not m.h.requires_grad and m.h.shape[-2] == 4
    second = m(x)
    assert not torch.allclose(first, second)  # the carried state changed the result
    m.reset()
    assert m.h is None
    m(torch.randint(0, 39, (3, 5)))  # another batch size starts from zeros
    assert m.h.shape[-2] == 3
