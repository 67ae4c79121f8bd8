"""All-gather across data-parallel ranks, with gradient, for batches of unequal size.

Ranks may hold different numbers of samples (region batches vary) and different sequence
lengths, so shapes are exchanged first and every dimension is padded to the largest; dim 0 is
cropped back after the gather, the other dimensions stay padded (pad with zeros / False).
Without an initialised process group (or with one rank) the tensor is returned as it is.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank() -> int:
    return _world()[0]


def _gather(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
    """Returns (gathered, sizes along dim 0, the padded shape of the other dims)."""
    _, world = _world()
    shape = torch.tensor(tensor.shape, dtype=torch.long, device=tensor.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes = torch.stack(shapes).tolist()
    padded_shape = [max(s[d] for s in shapes) for d in range(tensor.dim())]
    padded = tensor
    if list(tensor.shape) != padded_shape:
        padded = tensor.new_zeros(padded_shape)
        padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    parts = [torch.empty(padded_shape, dtype=tensor.dtype, device=tensor.device) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    sizes = [s[0] for s in shapes]
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sizes, padded_shape[1:]


def gather_padded(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (ids, masks, metadata)."""
    if _world()[1] == 1:
        return tensor
    return _gather(tensor)[0]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        gathered, sizes, _ = _gather(tensor)
        ctx.local_shape = tensor.shape
        ctx.offset = sum(sizes[: rank()])
        return gathered

    @staticmethod
    def backward(ctx, grad):
        # Each rank's loss depends on every rank's samples: sum the gradients of all ranks for
        # the local samples. When every rank computes the same global loss (ITC), the local
        # gradient is world_size times its share, and the data-parallel mean of parameter
        # gradients is then exactly the gradient of the global loss.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        local = grad[ctx.offset : ctx.offset + ctx.local_shape[0]]
        return local[(slice(None),) + tuple(slice(0, n) for n in ctx.local_shape[1:])]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    if _world()[1] == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)
