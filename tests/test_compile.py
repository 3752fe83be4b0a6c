"""torch.compile(fullgraph=True) on the zoo models and the drop-in GRU / RNN, on every backend that
runs here: torch._dynamo.explain finds no graph break, and the compiled module matches the eager
one (outputs, every gradient, running statistics, carried state), in training and in eval, over
two batches (the second starts from the carried state of Model3/4/5).

Compiling is slow on CI's 2 cores: small shapes; the aot_eager compile backend (Dynamo and
AOTAutograd, the parts that see hnrnn's ops, fake kernels and autograd) for the grid, inductor
(which adds code generation around hnrnn's ops, called as extern kernels) for a representative
model; the rest of the grid is marked slow. The Triton backend runs in the
interpreter tier (tests/run.sh).
"""
import copy

import pytest
import torch

import hnrnn.nn
from hnrnn.zoo import MODELS

pytestmark = pytest.mark.usefixtures("one_thread")  # torch.nn's CPU RNN: see tests/conftest.py

# float32; inductor reorders and fuses the arithmetic around hnrnn's ops, hence its looser bound.
TOLERANCE = {"aot_eager": dict(atol=1e-5, rtol=1.3e-6), "inductor": dict(atol=2e-5, rtol=1e-4)}


def _grads(module, args):
    """Forward on fresh leaves of the float args, backward of a fixed random projection of every
    output. Returns (outputs, grads of the float args and of every parameter)."""
    leaves = [a.detach().clone().requires_grad_(True) if a.is_floating_point() else a for a in args]
    outs = module(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(len(outs))
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device)).sum() for o in outs)
    wrt = [t for t in leaves if t.requires_grad] + list(module.parameters())
    return [o.detach() for o in outs], torch.autograd.grad(loss, wrt)


def check_compiled_matches_eager(module, make_args, compile_backend="aot_eager", allow_rnn=False):
    """`module`: an eager module; make_args(): a fresh tuple of input tensors."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=allow_rnn):
        for training in (True, False):
            probe = copy.deepcopy(module).train(training)  # explain runs it: keep `module` as it is
            explanation = torch._dynamo.explain(probe)(*make_args())
            assert explanation.graph_break_count == 0, explanation.break_reasons
        torch._dynamo.reset()
        ours = copy.deepcopy(module)
        compiled = torch.compile(ours, fullgraph=True, backend=compile_backend)
        tol = TOLERANCE[compile_backend]
        for training in (True, False):
            module.train(training)
            ours.train(training)
            for _ in range(2):
                args = make_args()
                want_outs, want_grads = _grads(module, args)
                got_outs, got_grads = _grads(compiled, args)
                for i, (a, b) in enumerate(zip(got_outs + list(got_grads), want_outs + list(want_grads))):
                    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"output/gradient {i}: {m}")
                for (name, b), a in zip(module.named_buffers(), ours.buffers()):
                    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"buffer {name}: {m}")
                if getattr(module, "h", None) is not None:
                    torch.testing.assert_close(ours.h, module.h, **tol)


# ---------------------------------------------------------------------------------------------
# The zoo
# ---------------------------------------------------------------------------------------------

def check_zoo_model(name, backend, compile_backend="aot_eager", device="cpu"):
    torch.manual_seed(0)
    model = MODELS[name](hidden_size=8, backend=backend).to(device)
    # The seed's Model4/5 use torch.nn.RNN / GRU, which Dynamo traces only with allow_rnn=True
    # (it refuses them otherwise); hnrnn's modules need no flag.
    check_compiled_matches_eager(model, lambda: (torch.randint(0, 39, (4, 3), device=device),), compile_backend,
                                 allow_rnn=backend == "eager")


ZOO_GRID = [(name, backend) for backend in ("cpu", "reference", "eager") for name in MODELS]
ZOO_DEFAULT = {(name, "cpu") for name in MODELS} | {("Model3", "reference"), ("Model5", "eager")}


@pytest.mark.parametrize("name,backend", [
    pytest.param(n, b, marks=() if (n, b) in ZOO_DEFAULT else pytest.mark.slow) for n, b in ZOO_GRID])
def test_zoo_model_compiles_fullgraph(name, backend):
    check_zoo_model(name, backend)


@pytest.mark.parametrize("name", ["Model3", pytest.param("Model5", marks=pytest.mark.slow)])
def test_zoo_model_compiles_with_inductor(name):
    check_zoo_model(name, "cpu", "inductor")


@pytest.mark.interpreter
@pytest.mark.parametrize("name", list(MODELS))
def test_zoo_model_compiles_fullgraph_triton(name):
    check_zoo_model(name, "triton")


# ---------------------------------------------------------------------------------------------
# The drop-in GRU / RNN
# ---------------------------------------------------------------------------------------------

def check_rnn_module(kind, backend, compile_backend="aot_eager", nonlinearity="tanh"):
    torch.manual_seed(0)
    kw = dict(nonlinearity=nonlinearity) if kind == "rnn" else {}
    module = {"gru": hnrnn.nn.GRU, "rnn": hnrnn.nn.RNN}[kind](
        3, 6, num_layers=2, batch_first=True, bidirectional=True, backend=backend, **kw)
    make_args = lambda: (torch.randn(4, 3, 3), torch.randn(4, 4, 6))  # noqa: E731
    check_compiled_matches_eager(module, make_args, compile_backend)
    # Inference: traced whole, the ops asked for no workspace (save=False), eager's outputs.
    torch._dynamo.reset()
    graphs = []

    def record_graph(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        compiled = torch.compile(module, fullgraph=True, backend=record_graph)
        args = make_args()
        for a, b in zip(compiled(*args), module(*args)):
            torch.testing.assert_close(a, b, **TOLERANCE[compile_backend])
    saves = [save_argument(node) for gm in graphs for node in gm.graph.nodes if save_argument(node) is not None]
    assert (saves or backend == "reference") and not any(saves), saves  # the reference runs no hnrnn op


def save_argument(node):
    """The `save` argument of an FX node calling an hnrnn op that has one, else None."""
    op = getattr(node.target, "default", node.target)
    schema = getattr(op, "_schema", None)
    if node.op != "call_function" or schema is None or schema.name.split("::")[0] != "hnrnn":
        return None
    names = [a.name for a in schema.arguments]
    if "save" not in names:
        return None
    i = names.index("save")
    return node.kwargs.get("save", node.args[i] if i < len(node.args) else True)


@pytest.mark.parametrize("kind,nonlinearity,backend", [
    pytest.param(k, n, b, marks=() if b == "cpu" or n == "tanh" else pytest.mark.slow)
    for b in ("cpu", "reference") for k, n in (("gru", None), ("rnn", "tanh"), ("rnn", "relu"))])
def test_rnn_module_compiles_fullgraph(kind, nonlinearity, backend):
    check_rnn_module(kind, backend, nonlinearity=nonlinearity)


@pytest.mark.slow
def test_rnn_module_compiles_with_inductor():
    check_rnn_module("gru", "cpu", "inductor")


@pytest.mark.interpreter
@pytest.mark.parametrize("kind,nonlinearity", [("gru", None), ("rnn", "relu")])
def test_rnn_module_compiles_fullgraph_triton(kind, nonlinearity):
    check_rnn_module(kind, "triton", nonlinearity=nonlinearity)
