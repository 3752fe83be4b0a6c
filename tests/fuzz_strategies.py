"""Hypothesis strategies of the fuzz tests: random cases for the runners of fuzz_cases.py."""
import torch
from hypothesis import settings
from hypothesis import strategies as st

from hnrnn.zoo import MODELS


def fuzz(share=1.0):
    """The loaded hypothesis profile (tests/conftest.py) with `share` of its example budget."""
    return settings(max_examples=max(1, round(settings().max_examples * share)))


DTYPES = st.sampled_from([torch.float32, torch.float64])
SEEDS = st.integers(0, 2 ** 16)
KINDS = st.sampled_from(["gru", "rnn_tanh", "rnn_relu"])


@st.composite
def zoo_cell_cases(draw, max_b=9, max_t=6, max_h=40):
    """Keyword arguments of zoo_cell_cases.check_backend (the single-step op when step)."""
    training = draw(st.booleans())
    step = draw(st.booleans())
    return dict(B=draw(st.integers(2 if training else 1, max_b)), T=1 if step else draw(st.integers(1, max_t)),
                H=draw(st.integers(1, max_h)), V=draw(st.integers(1, 12)), norm_state=draw(st.booleans()),
                training=training, step=step, momentum=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
                eps=draw(st.sampled_from([1e-5, 1e-3])), seed=draw(SEEDS),
                skip_first_linear=not step and draw(st.booleans()))


@st.composite
def recurrence_cases(draw, max_t=6, max_b=9, max_h=20):
    """Zero-size T, B and H included; lengths (a packed batch's) in [0, T], in any order."""
    T, B = draw(st.integers(0, max_t)), draw(st.integers(0, max_b))
    lengths = draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B))
    return dict(kind=draw(KINDS), T=T, B=B, H=draw(st.integers(0, max_h)), bias=draw(st.booleans()),
                reverse=draw(st.booleans()), lengths=lengths, seed=draw(SEEDS))


@st.composite
def module_cases(draw, max_layers=3, max_h=12, max_t=6, max_b=6):
    kind = draw(KINDS)
    layers = draw(st.integers(1, max_layers))
    form = draw(st.sampled_from(["batched", "unbatched", "packed"]))
    T = draw(st.integers(1, max_t))
    B = 1 if form == "unbatched" else draw(st.integers(1 if form == "packed" else 0, max_b))
    dtype = draw(DTYPES)
    # Dropout draws the same masks as torch.nn's only for unpacked float64 (the RNG stream
    # depends on the dtype, and packed data is dropped in another layout).
    dropout_ok = layers > 1 and form != "packed" and dtype == torch.float64
    return dict(kind=kind, I=draw(st.integers(1, 6)), H=draw(st.integers(1, max_h)), layers=layers,
                bias=draw(st.booleans()), batch_first=draw(st.booleans()), bidirectional=draw(st.booleans()),
                h0=draw(st.booleans()), form=form, T=T, B=B, dtype=dtype, training=draw(st.booleans()),
                dropout=draw(st.sampled_from([0.0, 0.5])) if dropout_ok else 0.0,
                lengths=draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if form == "packed" else None,
                seed=draw(SEEDS))


@st.composite
def zoo_model_cases(draw, names=tuple(MODELS), float64_names=tuple(MODELS), max_h=12, max_b=6, max_t=5):
    """float64 for the models in float64_names, in training or eval; float32 in eval only: in
    training, the batch statistics of these tiny random batches are ill-conditioned in float32
    (with B = 2 BatchNorm's output is +-1 and its input gradient pure cancellation), so two exact
    float32 implementations differ by far more than 2x (measured: 10x to 1e25x). Eval-mode
    BatchNorm is an affine map and stays within 2x; float32 training is covered at the op level."""
    name = draw(st.sampled_from(names))
    dtype = draw(DTYPES) if name in float64_names else torch.float32
    training = dtype == torch.float64 and draw(st.booleans())
    return dict(name=name, vocab=draw(st.integers(2, 15)), hidden=draw(st.integers(1, max_h)),
                B=draw(st.integers(2 if training else 1, max_b)), T=draw(st.integers(1, max_t)),
                training=training, dtype=dtype, seed=draw(SEEDS))
