"""Drop-in replacements for torch.nn.GRU and torch.nn.RNN running hnrnn's fused recurrence ops.

Parameters, their names, order, shapes and initialisation, repr, state_dict, and the input
checks are torch.nn.RNNBase's own (the classes derive from it), so state_dicts move both ways
unchanged and bad inputs raise the same exceptions. Only forward differs: one input GEMM
per layer and direction, then a fused recurrence op (hnrnn.ops.rnn) on the chosen backend.

They derive from RNNBase rather than nn.GRU / nn.RNN on purpose: torch.compile refuses to
trace modules that are instances of nn.GRU / nn.RNN / nn.LSTM, and these are meant to be
traced with fullgraph=True.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from hnrnn.ops import rnn as ops

__all__ = ["GRU", "RNN"]


class _FusedRNNBase(torch.nn.RNNBase):
    _name = "RNN"
    _dims_word = " tensor"  # torch.nn's messages differ by one word between RNN and GRU

    def _op_mode(self) -> str:
        return {"GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}[self.mode]

    def check_input(self, input: Tensor, batch_sizes: Optional[Tensor]) -> None:
        # RNNBase.check_input with the weight read from the module (not the cached flat
        # weight list, which torch.func.functional_call would leave stale).
        w = getattr(self, self._flat_weights_names[0])
        if input.dtype != w.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({w.dtype}). "
                f"Convert input: input.to({w.dtype}), or convert model: model.to({input.dtype})")
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(f"input must have {expected_input_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.size(-1)}")

    def _check_devices_and_state_dtype(self, input: Tensor, hx: Tensor) -> None:
        # What torch.nn's kernels refuse (with these messages), checked before any of ours runs.
        for name in self._flat_weights_names:  # read from the module, as check_input does
            w = getattr(self, name)
            if w.device != input.device:
                raise RuntimeError("Input and parameter tensors are not at the same device, found input tensor at "
                                   f"{input.device} and parameter tensor at {w.device}")
        if hx.device != input.device:
            raise RuntimeError("Input and hidden tensors are not at the same device, found input tensor at "
                               f"{input.device} and hidden tensor at {hx.device}")
        if hx.dtype != input.dtype and not torch._C._is_any_autocast_enabled():
            raise RuntimeError(f"hx dtype ({hx.dtype}) does not match input dtype ({input.dtype})")

    def _layer_weights(self):
        weights = []
        for names in self._all_weights:
            w = [getattr(self, n) for n in names]
            if len(w) == 2:
                w = w + [None, None]
            weights.append(w)
        return weights

    def forward(self, input, hx: Optional[Tensor] = None):
        num_directions = 2 if self.bidirectional else 1
        orig_input = input
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            max_batch_size = int(batch_sizes[0])
        else:
            batch_sizes = None
            sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(f"{self._name}: Expected input to be 2D or 3D, got {input.dim()}D"
                                 f"{self._dims_word} instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            hx = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                             dtype=input.dtype, device=input.device)
        else:
            # each row of the state must meet the sequence the caller thinks it meets
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(input, hx, batch_sizes)
        self._check_devices_and_state_dtype(input, hx)

        lengths = None
        if batch_sizes is not None:
            # packed (sorted by length, longest first) -> padded time-major + lengths
            x, lengths = pad_packed_sequence(PackedSequence(input, batch_sizes), batch_first=False)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        out, h_n = ops.recurrent_network(
            x, hx, self._layer_weights(), self._op_mode(), self.num_layers, self.bidirectional,
            float(self.dropout), self.training, lengths, self.backend)

        if batch_sizes is not None:
            data = pack_padded_sequence(out, lengths, enforce_sorted=True).data
            return (PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(h_n, unsorted_indices))
        if self.batch_first:
            out = out.transpose(0, 1)
        if not is_batched:
            out = out.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
        return out, self.permute_hidden(h_n, unsorted_indices)

    def __setstate__(self, d):
        super().__setstate__(d)
        self.__dict__.setdefault("backend", None)


class GRU(_FusedRNNBase):
    """torch.nn.GRU with hnrnn's fused kernels; `backend=` picks cuda / triton / cpu / reference
    (default: $HNRNN_BACKEND, else the fastest for the input's device)."""
    _name = "GRU"
    _dims_word = ""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)
        self.backend = backend


class RNN(_FusedRNNBase):
    """torch.nn.RNN (tanh or relu) with hnrnn's fused kernels; `backend=` as for GRU."""
    _name = "RNN"

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)
        self.backend = backend
