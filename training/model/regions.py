"""Visual concepts from patch embeddings: the ViT runs once per image, regions reuse its tokens."""
from __future__ import annotations

import torch


def region_tokens(image_tokens: torch.Tensor, image_index: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """Tokens of each region: token 0 is the mean of the patches its box overlaps.

    image_tokens (B_img, 1 + P, D) as the vision tower returns them; image_index (R,) picks the
    image of each region; patch_mask (R, 1 + P) bool marks index 0 and the overlapped patches.
    The patch tokens are returned whole; ``patch_mask`` is what limits attention to the region.
    """
    tokens = image_tokens[image_index]
    patches = tokens[:, 1:]
    weights = patch_mask[:, 1:].to(patches.dtype).unsqueeze(-1)
    pooled = (patches * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    return torch.cat([pooled.unsqueeze(1), patches], dim=1)


def first_text_of_region(image_index: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(R,) long: for each region text, the position of the first text of its region (texts of
    the same image with the same box describe one region). Fixed shapes, no read on the host."""
    same = (image_index[:, None] == image_index[None, :]) & (boxes[:, None, :] == boxes[None, :, :]).all(dim=-1)
    return same.long().argmax(dim=1)
