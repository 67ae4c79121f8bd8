"""The losses' collectives across data-parallel ranks, at fixed shapes.

Every rank hands in tensors of the same shape: a batch kind's rows are padded to the bound the
configuration gives (`pad_rows`), and the rows that are padding are marked invalid by the
caller. No shape is exchanged and nothing is read on the host, so none of these functions
makes the host wait for the device. Each collective is recorded under the category its caller
names (training/instrumentation.py). Without an initialised process group, or with one rank,
each function returns its input.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from training.runtime.instrumentation import traffic_category


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank() -> int:
    return world()[0]


def world_size() -> int:
    return world()[1]


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """TENSOR with dim 0 padded with zeros (False) to ROWS."""
    count = tensor.shape[0]
    if count == rows:
        return tensor
    if count > rows:
        raise ValueError(f"{count} rows exceed the bound of {rows} rows per batch")
    return torch.cat([tensor, tensor.new_zeros((rows - count,) + tuple(tensor.shape[1:]))])


def _all_gather(tensor: torch.Tensor, category: str) -> torch.Tensor:
    tensor = tensor.contiguous()
    out = tensor.new_empty((world_size() * tensor.shape[0],) + tuple(tensor.shape[1:]))
    with traffic_category(category):
        (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, tensor)
    return out


def gather_rows(tensor: torch.Tensor, category: str = "features") -> torch.Tensor:
    """Every rank's TENSOR stacked along dim 0 in rank order, without gradient."""
    if world_size() == 1:
        return tensor
    return _all_gather(tensor, category)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, category):
        ctx.category = category
        return _all_gather(tensor, category)

    @staticmethod
    def backward(ctx, grad):
        # Every rank's loss may depend on this rank's rows: their gradient is the sum over ranks
        # of each rank's gradient for them, which a reduce-scatter delivers to their owner.
        grad = grad.contiguous()
        local = grad.new_empty((grad.shape[0] // world_size(),) + tuple(grad.shape[1:]))
        with traffic_category(ctx.category):
            (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(local, grad)
        return local, None


def gather_with_grad(tensor: torch.Tensor, category: str = "features") -> torch.Tensor:
    """`gather_rows` whose backward returns to each rank the summed gradient of its rows."""
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, category)


def _all_to_all(tensor: torch.Tensor, category: str) -> torch.Tensor:
    tensor = tensor.contiguous()
    out = torch.empty_like(tensor)
    with traffic_category(category):
        dist.all_to_all_single(out, tensor)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, category):
        ctx.category = category
        return _all_to_all(tensor, category)

    @staticmethod
    def backward(ctx, grad):
        # An all-to-all of equal chunks is its own transpose: chunk j of rank i went to chunk i
        # of rank j, so the gradient goes back the same way.
        return _all_to_all(grad, ctx.category), None


def all_to_all_rows(tensor: torch.Tensor, category: str) -> torch.Tensor:
    """Chunk j (of world-size equal chunks along dim 0) of this rank's TENSOR goes to rank j,
    which receives it as its chunk i (this rank); with gradient when TENSOR has one."""
    if world_size() == 1:
        return tensor
    if tensor.requires_grad:
        return _AllToAll.apply(tensor, category)
    return _all_to_all(tensor, category)


def all_reduce_sum(tensor: torch.Tensor, category: str) -> torch.Tensor:
    """The sum over ranks of TENSOR (a new tensor, without gradient)."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    with traffic_category(category):
        dist.all_reduce(total)
    return total
