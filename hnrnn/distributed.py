"""Data-parallel training over processes: ``torchrun --nproc_per_node=N -m hnrnn train ...``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; ``init_from_env``
joins the process group (gloo on CPU, nccl on CUDA). The Learner then gives each rank its
contiguous slice of the ``bs`` rows of every batch, wraps the model in DistributedDataParallel
(gradients averaged) and replaces every BatchNorm by ``SyncBatchNormFlat``, which normalises
with the statistics of the whole batch across ranks, so N ranks compute what one process does
on the combined batch, up to float rounding. Stateful models keep, on each rank, the hidden
state of that rank's rows, which is the single-process state of those rows.
"""
import os
from typing import Tuple

import torch
import torch.distributed as dist
import torch.nn as nn


def active() -> bool:
    """True once this process has joined a process group."""
    return dist.is_available() and dist.is_initialized()


def launched() -> bool:
    """True in a process started by torchrun (or anything else that sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes; returns this rank's device (cuda:LOCAL_RANK
    on a GPU machine, the CPU otherwise)."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown():
    if active():
        dist.destroy_process_group()


def rank_and_world() -> Tuple[int, int]:
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (nothing to do in a single process)."""
    if active():
        dist.all_reduce(t)
    return t


def barrier(device: torch.device):
    if active():
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


class _SyncBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of (n, C) rows spread over ranks: the per-channel sum and sum of
    squares are all-reduced in forward, the sums of dy and dy * x_hat in backward (as
    nn.SyncBatchNorm does on GPUs; it refuses CPU tensors). Sums are taken in float64 so that
    E[x^2] - E[x]^2 loses nothing. The backward returns, like every rank's backward under DDP,
    the gradient of the sum of all ranks' losses; DDP's averaging then gives the mean."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        c = x.shape[1]
        x64 = x.double()
        stats = torch.cat([x64.sum(0), (x64 * x64).sum(0), x64.new_tensor([x.shape[0]])])
        dist.all_reduce(stats, group=group)
        n = stats[-1]
        ctx.n, ctx.group = n.item(), group
        if ctx.n <= 1:  # as nn.BatchNorm1d says it
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(ctx.n)} "
                             f"rows over all ranks")
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)  # biased, as used for normalising
        invstd = torch.rsqrt(var + eps)
        x_hat = ((x64 - mean) * invstd).to(x.dtype)
        ctx.save_for_backward(x_hat, weight, invstd.to(x.dtype))
        mean, var = mean.to(x.dtype), var.to(x.dtype)
        ctx.mark_non_differentiable(mean, var, n)
        return x_hat * weight + bias, mean, var, n

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, _dn):
        x_hat, weight, invstd = ctx.saved_tensors
        sum_dy, sum_dy_xhat = dy.sum(0), (dy * x_hat).sum(0)
        dx = None
        if ctx.needs_input_grad[0]:  # the same on every rank: their graphs are identical
            sums = torch.cat([sum_dy, sum_dy_xhat]).double()
            dist.all_reduce(sums, group=ctx.group)
            c = x_hat.shape[1]
            mean_dy, mean_dy_xhat = (sums[:c] / ctx.n).to(dy.dtype), (sums[c:] / ctx.n).to(dy.dtype)
            dx = (dy - mean_dy - x_hat * mean_dy_xhat) * (weight * invstd)
        return dx, sum_dy_xhat, sum_dy, None, None


class SyncBatchNormFlat(nn.BatchNorm1d):
    """BatchNorm over all leading dimensions (channels last, like zoo.BatchNorm1dFlat) whose
    training statistics are those of the whole batch across the ranks of ``group``. Same
    parameters, buffers and state_dict keys as nn.BatchNorm1d; eval mode uses the running
    statistics, which stay equal on every rank."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, group=None):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.group = group

    def forward(self, x):
        *lead, c = x.shape
        flat = x.reshape(-1, c)
        if not (self.training and active()):
            return super().forward(flat).view(*lead, c)
        y, mean, var, n = _SyncBatchNorm.apply(flat, self.weight, self.bias, self.eps, self.group)
        with torch.no_grad():  # running statistics as nn.BatchNorm1d keeps them (unbiased variance)
            self.num_batches_tracked.add_(1)
            m = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var * (n / (n - 1)).to(var.dtype), alpha=m)
        return y.view(*lead, c)


def convert_sync_batchnorm(module: nn.Module, group=None) -> nn.Module:
    """Replace every nn.BatchNorm1d (zoo.BatchNorm1dFlat included) inside ``module`` by a
    SyncBatchNormFlat holding the same parameters and buffers. The zoo's BatchNorms all see
    channels-last input ((B, H) per step, or (B, T, H) flattened), which is what it expects."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm1d) and not isinstance(child, SyncBatchNormFlat):
            if not (child.affine and child.track_running_stats):
                raise ValueError(f"{name}: only affine BatchNorm with running statistics can be synchronised")
            sync = SyncBatchNormFlat(child.num_features, child.eps, child.momentum, group)
            sync.weight, sync.bias = child.weight, child.bias
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(sync, buf, getattr(child, buf))
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child, group)
    return module


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` with synchronised BatchNorm (when more than one
    rank shares the batch); the model itself when not launched distributed."""
    if not active():
        return model
    if dist.get_world_size() > 1:
        # Its own group: the statistics' all-reduces interleave with DDP's gradient buckets.
        convert_sync_batchnorm(model, dist.new_group())
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
