"""Determinism: the same call twice gives bitwise-equal outputs, states, running statistics and
gradients, for every entry point on every backend that runs on the CPU (triton in the
interpreter tier). B = 37 spans three of the CPU kernels' 16-row blocks, so the threads split
the batch; dropout masks come from a seeded generator, as a user would seed them."""
import pytest
import torch

from fuzz_cases import module_trio, run_module, run_recurrence, run_zoo_model, zoo_model_pair
from zoo_cell_cases import fused, make_inputs, run

B, T, H = 37, 5, 24
LENGTHS = [(7 * b) % (T + 1) for b in range(B)]  # every length in [0, T], unsorted


def zoo_cell(backend, dtype, step=False, norm_state=True):
    ids, floats = make_inputs(B, 1 if step else T, H, V=11, dtype=dtype, seed=3)
    outs, grads = run(fused(backend), ids[:, 0] if step else ids, floats, norm_state, True)
    return outs + grads


def recurrence(kind, lengths):
    case = dict(kind=kind, T=T, B=B, H=H, bias=True, reverse=True, lengths=lengths, seed=4)
    return lambda backend, dtype: run_recurrence(backend, case, dtype)


def module(kind, form, dropout=0.0):
    case = dict(kind=kind, I=5, H=H, layers=2, bias=True, batch_first=False, bidirectional=True, h0=True,
                form=form, T=T, B=B, dtype=None, training=True, dropout=dropout,
                lengths=[max(n, 1) for n in LENGTHS] if form == "packed" else None, seed=5)

    def call(backend, dtype):
        c = dict(case, dtype=dtype)
        return run_module(module_trio(c, backend)[2], c, dtype)
    return call


def zoo_model(name):
    case = dict(name=name, vocab=11, hidden=H, B=B, T=T, training=True, seed=6)

    def call(backend, dtype):
        c = dict(case, dtype=dtype)
        return run_zoo_model(zoo_model_pair(c, backend)[1], c)
    return call


ENTRY_POINTS = {
    "zoo_cell_sequence": zoo_cell,
    "zoo_cell_sequence_unnormed_state": lambda be, dt: zoo_cell(be, dt, norm_state=False),
    "zoo_cell_step": lambda be, dt: zoo_cell(be, dt, step=True),
    "gru_recurrence": recurrence("gru", LENGTHS),
    "rnn_recurrence": recurrence("rnn_relu", None),
    "GRU_dropout": module("gru", "batched", dropout=0.5),
    "RNN_packed": module("rnn_tanh", "packed"),
    "Model3": zoo_model("Model3"),
    "Model5": zoo_model("Model5"),
}
TRITON_FLOAT32_ONLY = ("zoo_cell_sequence", "zoo_cell_sequence_unnormed_state", "zoo_cell_step", "Model3")


def check_twice(name, backend, dtype):
    first, second = ENTRY_POINTS[name](backend, dtype), ENTRY_POINTS[name](backend, dtype)
    assert len(first) == len(second) and len(first) > 3
    for i, (a, b) in enumerate(zip(first, second)):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{name} on {backend}: tensor {i} differs between calls"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_same_call_twice_is_bitwise_equal(name, backend, dtype):
    check_twice(name, backend, dtype)


TRITON_CASES = [(n, d) for n in ENTRY_POINTS for d in (torch.float32, torch.float64)
                if d == torch.float32 or n not in TRITON_FLOAT32_ONLY]  # the Triton zoo cell is float32


@pytest.mark.interpreter
@pytest.mark.parametrize("name,dtype", TRITON_CASES, ids=[f"{n}-{d}" for n, d in TRITON_CASES])
def test_same_call_twice_is_bitwise_equal_triton(name, dtype):
    check_twice(name, "triton", dtype)
