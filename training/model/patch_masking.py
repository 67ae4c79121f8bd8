"""Block-wise masks over the patch grid, drawn on the device at a fixed shape.

BEiT masks rectangles of patches (random area and aspect ratio) until the masked count is
reached, in a loop on the host that rejects blocks which would overshoot. Here every image
draws a fixed number of candidate rectangles at once; each patch is ranked by the first
rectangle that covers it (then by raster order within it), patches that no rectangle covers
come last in random order, and the first ``count`` patches of that ranking are masked. So
the count is exact, the masked patches are whole rectangles (overlapping ones merge) plus at
most one rectangle cut short in raster order (still one connected piece wherever it does not
touch the earlier ones), and only when the rectangles cover too little are the remaining
patches scattered (the candidate count makes that rare: it offers about six times the area
to mask).

Everything has a shape known from the configuration (batch, grid, count); the randomness comes
from the device's default generator, whose state the trainer saves with every checkpoint
(training/rng_state.py), as it does for the ITM negatives: a resumed run draws the same masks.
No value is read on the host.
"""
from __future__ import annotations

import dataclasses
import math

import torch

# BEiT's block shape: aspect ratio log-uniform in [0.3, 1 / 0.3]; at most 16 patches as the
# smallest block (BEiT's minimum on its 14 x 14 grid), less on small grids.
MIN_ASPECT = 0.3
LARGEST_MIN_BLOCK = 16


@dataclasses.dataclass
class PatchMasks:
    masked: torch.Tensor  # (B, count) long, ascending patch indices (raster order of the grid)
    kept: torch.Tensor  # (B, patches - count) long, ascending


def masked_count(patches: int, ratio: float) -> int:
    """Patches masked per image at RATIO: at least one, and at least one left visible."""
    return min(patches - 1, max(1, round(ratio * patches)))


def block_sizes(count: int) -> tuple[int, int]:
    """(smallest, largest) area in patches of a candidate block when COUNT patches are masked."""
    return max(1, min(LARGEST_MIN_BLOCK, count // 4)), count


def candidate_blocks(count: int) -> int:
    smallest, largest = block_sizes(count)
    mean_area = (smallest + largest) / 2
    return max(4, math.ceil(6 * count / mean_area))


def block_masks(batch: int, grid: int, count: int, device: torch.device | str,
                generator: torch.Generator | None = None) -> PatchMasks:
    """COUNT masked patches per image of a GRID x GRID patch grid, block-wise; see the module."""
    patches = grid * grid
    if not 0 < count < patches:
        raise ValueError(f"masked count must lie between 1 and {patches - 1} patches, got {count}")
    smallest, largest = block_sizes(count)
    blocks = candidate_blocks(count)
    draw = torch.rand(batch, blocks, 4, device=device, generator=generator)
    area = smallest + draw[..., 0] * (largest - smallest)
    aspect = torch.exp(math.log(MIN_ASPECT) + draw[..., 1] * 2 * math.log(1 / MIN_ASPECT))
    height = torch.sqrt(area * aspect).round().clamp(1, grid)
    width = torch.sqrt(area / aspect).round().clamp(1, grid)
    top = (draw[..., 2] * (grid - height + 1)).floor()
    left = (draw[..., 3] * (grid - width + 1)).floor()

    rows = torch.arange(grid, device=device, dtype=draw.dtype)
    inside_rows = (rows >= top[..., None]) & (rows < (top + height)[..., None])  # (B, blocks, grid)
    inside_cols = (rows >= left[..., None]) & (rows < (left + width)[..., None])
    covered = (inside_rows[..., :, None] & inside_cols[..., None, :]).flatten(2)  # (B, blocks, patches)
    block_index = torch.arange(blocks, device=device)[None, :, None]
    first = torch.where(covered, block_index, blocks).amin(dim=1)  # (B, patches); `blocks` = none

    # Rank: the first block covering a patch, then raster order within it; uncovered patches
    # after every block, in random order. Keys stay exact integers in float32 below 2**24.
    raster = torch.arange(patches, device=device, dtype=draw.dtype)
    scatter = torch.rand(batch, patches, device=device, generator=generator) * patches
    within = torch.where(first < blocks, raster, scatter)
    order = (first.to(draw.dtype) * patches + within).argsort(dim=1)
    masked, _ = order[:, :count].sort(dim=1)
    kept, _ = order[:, count:].sort(dim=1)
    return PatchMasks(masked=masked, kept=kept)
