"""Pure-PyTorch definition of every hnrnn op: the ground truth of all tests.

Nothing here is fused or clever: each function is the plainest correct statement of
what an op computes, differentiable by torch.autograd. Every backend (cpu, cuda,
triton) must agree with these functions; every function here is in turn tested
against torch.nn (nn.Embedding/nn.Linear/nn.BatchNorm1d called per step, nn.RNN, nn.GRU).

All functions are functional: running statistics come in and updated copies go out.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------
# Zoo cell: the lesson's recurrent step (Model0..Model3)
#
#   r_t   = ReLU(W (h_{t-1} + E[x_t]) + b)
#   out_t = BN_t(r_t)                     (BatchNorm1d over the batch, once per step)
#   h_t   = out_t  if norm_state          (Model0/Model1: BN inside the recurrence)
#           r_t    otherwise              (Model2/Model3: BN on the output only)
#
# skip_first_linear: step 0 has no linear layer, r_0 = ReLU(h0 + E[x_0]) (Model0's first step,
# `bn(relu(i_h(x[:, 0])))` with h0 = 0).
# ---------------------------------------------------------------------------


def batch_norm_step(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                    running_var: Tensor, training: bool, momentum: float, eps: float
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    """nn.BatchNorm1d on a (B, H) tensor, functional: returns (y, new_running_mean, new_running_var).

    Training: normalise with the biased batch variance; the running variance is updated
    with the unbiased one, exactly as PyTorch. Eval: use the running statistics. An empty
    batch leaves the running statistics as they are, as nn.BatchNorm1d does.
    y is computed as x * scale + shift, the form of torch's CPU kernel, so that inf or NaN
    parameters give NaN where nn.BatchNorm1d's output has NaN.
    """
    n = x.shape[0]
    if training and n == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    if training and n > 1:
        mean = x.mean(0)
        var = x.var(0, unbiased=False)
        new_mean = (1 - momentum) * running_mean + momentum * mean.detach()
        new_var = (1 - momentum) * running_var + momentum * var.detach() * (n / (n - 1))
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    scale = torch.rsqrt(var + eps) * weight
    return x * scale + (bias - mean * scale), new_mean, new_var


def zoo_cell_step(ids: Tensor, h: Tensor, emb: Tensor, weight: Tensor, bias: Tensor,
                  bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
                  norm_state: bool, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                  linear: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step. ids: (B,) int64; h: (B, H). Returns (out, h_new, running_mean, running_var).
    linear=False: no linear layer, r = ReLU(h + E[ids])."""
    x = h + emb[ids]
    r = F.relu(F.linear(x, weight, bias) if linear else x)
    out, rm, rv = batch_norm_step(r, bn_weight, bn_bias, running_mean, running_var,
                                  training, momentum, eps)
    return out, (out if norm_state else r), rm, rv


def zoo_cell_sequence(ids: Tensor, h0: Tensor, emb: Tensor, weight: Tensor, bias: Tensor,
                      bn_weight: Tensor, bn_bias: Tensor, running_mean: Tensor, running_var: Tensor,
                      norm_state: bool, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                      skip_first_linear: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """All steps. ids: (B, T) int64; h0: (B, H). Returns (out (B, T, H), h_T, running_mean, running_var)."""
    h, rm, rv = h0, running_mean, running_var
    outs = []
    for t in range(ids.shape[1]):
        out, h, rm, rv = zoo_cell_step(ids[:, t], h, emb, weight, bias, bn_weight, bn_bias,
                                       rm, rv, norm_state, training, momentum, eps,
                                       linear=not (skip_first_linear and t == 0))
        outs.append(out)
    return torch.stack(outs, 1), h, rm, rv


# ---------------------------------------------------------------------------
# GRU and vanilla RNN, PyTorch's formulation (gate order r, z, n)
# ---------------------------------------------------------------------------


def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
             b_hh: Optional[Tensor], nonlinearity: str = "tanh") -> Tensor:
    """h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    act = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]
    return act(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
             b_hh: Optional[Tensor]) -> Tensor:
    """r = s(Wir x + bir + Whr h + bhr); z = s(Wiz x + biz + Whz h + bhz);
    n = tanh(Win x + bin + r * (Whn h + bhn)); h' = (1 - z) * n + z * h."""
    gi = F.linear(x, w_ih, b_ih)
    gh = F.linear(h, w_hh, b_hh)
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def recurrent_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                    b_hh: Optional[Tensor], mode: str, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """One layer, one direction. x: (T, B, I); h0: (B, H); mode: 'gru', 'rnn_tanh' or 'rnn_relu'.
    Returns (out (T, B, H), h_T)."""
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    h = h0
    outs: List[Tensor] = [None] * x.shape[0]  # type: ignore[list-item]
    for t in steps:
        if mode == "gru":
            h = gru_cell(x[t], h, w_ih, w_hh, b_ih, b_hh)
        else:
            h = rnn_cell(x[t], h, w_ih, w_hh, b_ih, b_hh, mode[len("rnn_"):])
        outs[t] = h
    return torch.stack(outs, 0), h


def recurrent_network(x: Tensor, h0: Tensor, weights: List[List[Optional[Tensor]]], mode: str,
                      num_layers: int, bidirectional: bool = False, dropout: float = 0.0,
                      training: bool = False, generator: Optional[torch.Generator] = None
                      ) -> Tuple[Tensor, Tensor]:
    """Stacked (and optionally bidirectional) network, time-major like torch.nn's default.

    x: (T, B, I); h0: (num_layers * num_directions, B, H);
    weights[layer * num_directions + direction] = [w_ih, w_hh, b_ih, b_hh] (biases may be None).
    Dropout (training only) is applied to each layer's output except the last, as torch.nn does.
    Returns (out (T, B, num_directions * H), h_n).
    """
    dirs = 2 if bidirectional else 1
    layer_input = x
    h_n = []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w_ih, w_hh, b_ih, b_hh = weights[k]
            out, h = recurrent_layer(layer_input, h0[k], w_ih, w_hh, b_ih, b_hh, mode, reverse=d == 1)
            outs.append(out)
            h_n.append(h)
        layer_input = torch.cat(outs, -1) if dirs == 2 else outs[0]
        if dropout > 0 and training and layer < num_layers - 1:
            keep = torch.empty_like(layer_input).bernoulli_(1 - dropout, generator=generator)
            layer_input = layer_input * keep / (1 - dropout)
    return layer_input, torch.stack(h_n, 0)


# ---------------------------------------------------------------------------
# Recurrence level (what the fused GRU / RNN ops compute): the input projection of all
# steps is done beforehand, gates_x[t] = x[t] W_ih^T + b_ih, and only the recurrence is left.
# lengths (int64 (B,), optional) masks packed sequences: step t of sequence b runs iff
# t < lengths[b]; masked steps output 0 and keep the state (so h_n is the last valid state,
# and a reverse direction starts at lengths[b] - 1).
# ---------------------------------------------------------------------------


def _masked_scan(gates_x: Tensor, h0: Tensor, step, reverse: bool,
                 lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    T = gates_x.shape[0]
    if T == 0:  # no steps: an empty output, the state unchanged
        return h0.new_zeros((0,) + tuple(h0.shape)), h0
    steps = range(T - 1, -1, -1) if reverse else range(T)
    h = h0
    outs: List[Tensor] = [None] * T  # type: ignore[list-item]
    for t in steps:
        h_new = step(gates_x[t], h)
        if lengths is None:
            h = h_new
            outs[t] = h_new
        else:
            active = (t < lengths.to(h.device)).unsqueeze(1)
            h = torch.where(active, h_new, h)
            outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
    return torch.stack(outs, 0), h


def gru_recurrence(gates_x: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
                   reverse: bool = False, lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """GRU recurrence on pre-projected input gates. gates_x: (T, B, 3H); h0: (B, H).
    Returns (out (T, B, H), h_n (B, H))."""
    def step(gx: Tensor, h: Tensor) -> Tensor:
        i_r, i_z, i_n = gx.chunk(3, -1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h
    return _masked_scan(gates_x, h0, step, reverse, lengths)


def rnn_recurrence(gates_x: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
                   nonlinearity: str = "tanh", reverse: bool = False,
                   lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Vanilla-RNN recurrence on pre-projected input gates. gates_x: (T, B, H); h0: (B, H)."""
    act = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]
    return _masked_scan(gates_x, h0, lambda gx, h: act(gx + F.linear(h, w_hh, b_hh)), reverse, lengths)
