"""The lesson's model zoo, Model0..Model5 (seed 000_de48bc8a3346202a), on any backend.

Parameter names are the seed's (``i_h``, ``h_h``, ``h_o``, ``bn``, ``rnn``), so the
notebook's state_dicts load. ``backend`` picks the implementation:

- ``"eager"``: the seed's code as written (nn.Embedding/nn.Linear/nn.BatchNorm1d per step,
  torch.nn.RNN / torch.nn.GRU, i.e. cuDNN on a GPU): the baseline users run today;
- ``None``/``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"``, ``"cuda"``: hnrnn's fused ops
  (hnrnn.ops.zoo_cell for Model0..3, hnrnn.nn.RNN / hnrnn.nn.GRU for Model4/5).

Model3/4/5 carry their hidden state across batches (detached); ``reset()`` clears it (the
learner calls it at the start of every epoch and of validation), and a batch of another size
starts from zeros.

Under data-parallel training (hnrnn.distributed) every BatchNorm becomes a SyncBatchNormFlat
and Model0..Model3 run the eager per-step path, so the batch statistics are those of the
whole batch over all ranks.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from hnrnn.distributed import SyncBatchNormFlat

EAGER = "eager"


class BatchNorm1dFlat(nn.BatchNorm1d):
    """fastai's BatchNorm1dFlat: nn.BatchNorm1d over all leading dimensions flattened."""

    def forward(self, x):
        if x.dim() == 2:
            return super().forward(x)
        *lead, h = x.shape
        return super().forward(x.contiguous().view(-1, h)).view(*lead, h)


class _ZooModel(nn.Module):
    """What Model0..Model3 share: the seed's four layers and the fused cell call."""

    def __init__(self, vocab_size: int = 39, hidden_size: int = 64, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend
        self.i_h = nn.Embedding(vocab_size, hidden_size)  # green arrow
        self.h_h = nn.Linear(hidden_size, hidden_size)    # brown arrow
        self.h_o = nn.Linear(hidden_size, vocab_size)     # blue arrow
        self.bn = nn.BatchNorm1d(hidden_size)

    @property
    def eager(self) -> bool:
        # The fused op normalises with this process's batch statistics; under data-parallel
        # training the synchronised BatchNorm runs once per step on the seed's eager path.
        return self.backend == EAGER or isinstance(self.bn, SyncBatchNormFlat)

    def fused_cell(self, ids, h0, norm_state: bool, skip_first_linear: bool = False):
        """All steps of ``h' = ReLU(h_h(h + i_h(x_t)))`` + per-step BatchNorm in one fused op
        (skip_first_linear: the first step without h_h, as Model0's). Returns (per-step outputs
        (B, T, H), final state); updates ``bn``'s running statistics exactly as calling
        ``self.bn`` once per step would."""
        from hnrnn.ops.zoo_cell import zoo_cell_sequence

        bn = self.bn
        out, h, rm, rv = zoo_cell_sequence(
            ids, h0, self.i_h.weight, self.h_h.weight, self.h_h.bias, bn.weight, bn.bias,
            bn.running_mean, bn.running_var, norm_state=norm_state, training=self.training,
            momentum=bn.momentum, eps=bn.eps, backend=None if self.backend == "auto" else self.backend,
            skip_first_linear=skip_first_linear)
        if self.training:
            # Update the buffers in place without bumping their autograd version, as
            # nn.BatchNorm1d's own kernel does: an eager call of the same BN earlier in the graph
            # saved them for its backward, and they are only read there in eval mode.
            with torch.no_grad():
                for buf, new in ((bn.running_mean, rm), (bn.running_var, rv)):
                    with torch.autograd._unsafe_preserve_version_counter(buf):
                        buf.copy_(new)
                bn.num_batches_tracked.add_(ids.shape[1])
        return out, h

    def zeros(self, x):
        return torch.zeros(x.shape[0], self.h_h.in_features, device=x.device, dtype=self.h_h.weight.dtype)


class Model0(_ZooModel):
    """Three hand-unrolled steps, BatchNorm inside the recurrence; predicts the 4th word."""
    stateful = False

    def forward(self, x):
        if not self.eager and x.shape[1] > 1:  # all three steps in one op, the first without h_h
            # (one word: h_h unused, so its gradient stays None as the seed's; none: its IndexError)
            _, h = self.fused_cell(x[:, :3], self.zeros(x), norm_state=True, skip_first_linear=True)
            return self.h_o(h)
        h = self.bn(F.relu(self.i_h(x[:, 0])))
        if x.shape[1] > 1:
            h = h + self.i_h(x[:, 1])
            h = self.bn(F.relu(self.h_h(h)))
        if x.shape[1] > 2:
            h = h + self.i_h(x[:, 2])
            h = self.bn(F.relu(self.h_h(h)))
        return self.h_o(h)


class Model1(_ZooModel):
    """Model0 as a loop over any number of steps."""
    stateful = False

    def forward(self, x):
        h = self.zeros(x)
        if self.eager:
            for i in range(x.shape[1]):
                h = h + self.i_h(x[:, i])
                h = self.bn(F.relu(self.h_h(h)))
        elif x.shape[1] > 0:  # no steps: the zero state, as the loop above
            _, h = self.fused_cell(x, h, norm_state=True)
        return self.h_o(h)


class Model2(_ZooModel):
    """A prediction after every word; BatchNorm on the output only; state reset every batch."""
    stateful = False

    def forward(self, x):
        h = self.zeros(x)
        if not self.eager:
            out, _ = self.fused_cell(x, h, norm_state=False)
            return self.h_o(out)
        res = []
        for i in range(x.shape[1]):
            h = h + self.i_h(x[:, i])
            h = F.relu(self.h_h(h))
            res.append(self.h_o(self.bn(h)))
        return torch.stack(res, dim=1)


class _Stateful:
    """Keeps the hidden state between batches, detached; ``reset()`` forgets it."""
    stateful = True
    h: Optional[torch.Tensor] = None

    def reset(self):
        self.h = None

    def state_for(self, x, shape):
        """The carried state, or zeros when there is none or the batch size changed."""
        if self.h is None or self.h.shape != shape or self.h.device != x.device:
            return torch.zeros(shape, device=x.device, dtype=self.h_o.weight.dtype)
        return self.h


class Model3(_Stateful, _ZooModel):
    """Model2 that keeps its state across batches."""

    def forward(self, x):
        h = self.state_for(x, (x.shape[0], self.h_h.in_features))
        if self.eager:
            res = []
            for i in range(x.shape[1]):
                h = h + self.i_h(x[:, i])
                h = F.relu(self.h_h(h))
                res.append(self.bn(h))
            res = torch.stack(res, dim=1)
        else:
            res, h = self.fused_cell(x, h, norm_state=False)
        self.h = h.detach()
        return self.h_o(res)


class _TorchRNNModel(_Stateful, nn.Module):
    """Model4/Model5: embedding -> recurrent module -> BatchNorm1dFlat -> linear."""
    num_layers = 1

    def __init__(self, vocab_size: int = 39, hidden_size: int = 64, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend
        self.i_h = nn.Embedding(vocab_size, hidden_size)
        self.rnn = self.make_rnn(hidden_size, backend)
        self.h_o = nn.Linear(hidden_size, vocab_size)
        self.bn = BatchNorm1dFlat(hidden_size)

    def forward(self, x):
        h = self.state_for(x, (self.num_layers, x.shape[0], self.rnn.hidden_size))
        res, h = self.rnn(self.i_h(x), h)
        self.h = h.detach()
        return self.h_o(self.bn(res))


def _hnrnn_backend(backend):
    return None if backend in (None, "auto") else backend


class Model4(_TorchRNNModel):
    """Model3's loop replaced by a (tanh) RNN module."""

    @staticmethod
    def make_rnn(hidden_size, backend):
        if backend == EAGER:
            return nn.RNN(hidden_size, hidden_size, batch_first=True)
        from hnrnn.nn import RNN
        return RNN(hidden_size, hidden_size, batch_first=True, backend=_hnrnn_backend(backend))


class Model5(_TorchRNNModel):
    """A 2-layer GRU."""
    num_layers = 2

    @staticmethod
    def make_rnn(hidden_size, backend):
        if backend == EAGER:
            return nn.GRU(hidden_size, hidden_size, 2, batch_first=True)
        from hnrnn.nn import GRU
        return GRU(hidden_size, hidden_size, 2, batch_first=True, backend=_hnrnn_backend(backend))


MODELS = {cls.__name__: cls for cls in (Model0, Model1, Model2, Model3, Model4, Model5)}


def loss4(input, target):
    """Cross entropy on the last token only (Model0/Model1)."""
    return F.cross_entropy(input, target[:, -1])


def acc4(input, target):
    return (input.argmax(-1) == target[:, -1]).float().mean()


def cross_entropy_flat(input, target):
    """fastai's CrossEntropyFlat: every position of every sequence."""
    return F.cross_entropy(input.reshape(-1, input.shape[-1]), target.reshape(-1))


def accuracy(input, target):
    return (input.argmax(-1).reshape(-1) == target.reshape(-1)).float().mean()


# The lesson's training recipe per model: bptt, fit_one_cycle arguments, loss, metric, and the
# final valid metric printed in the two seed runs (000 and 003).
RECIPES = {
    "Model0": dict(bptt=3, epochs=6, max_lr=1e-4, pct_start=0.3, loss=loss4, metric=acc4,
                   seed_accuracy=(0.353860, 0.467601)),
    "Model1": dict(bptt=3, epochs=6, max_lr=1e-4, pct_start=0.3, loss=loss4, metric=acc4,
                   seed_accuracy=(0.455882, 0.468980)),
    "Model2": dict(bptt=20, epochs=10, max_lr=1e-4, pct_start=0.1, loss=cross_entropy_flat,
                   metric=accuracy, seed_accuracy=(0.430256, 0.271875)),
    "Model3": dict(bptt=20, epochs=20, max_lr=3e-3, pct_start=0.3, loss=cross_entropy_flat,
                   metric=accuracy, seed_accuracy=(0.554048, 0.539915)),
    "Model4": dict(bptt=20, epochs=20, max_lr=3e-3, pct_start=0.3, loss=cross_entropy_flat,
                   metric=accuracy, seed_accuracy=(0.580043, 0.574219)),
    "Model5": dict(bptt=20, epochs=10, max_lr=1e-2, pct_start=0.3, loss=cross_entropy_flat,
                   metric=accuracy, seed_accuracy=(0.830753, 0.838992)),
}
