"""The light decoder of masked image modelling (MAE's): the vision tower's tokens of the kept
patches, projected to the decoder's width, are put back at their places in the grid; every
masked place holds one learned mask token; fixed 2D sine-cosine positions are added; a few
transformer blocks; the masked places only are projected to the pixels of their patch.

The decoder is a training-time head: evaluation, inference and export of the towers do not
use it (a model folder keeps its weights, so that pre-training can continue from it).
"""
from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn


class MaskedImageDecoder(nn.Module):
    def __init__(self, in_width: int, grid: int, patch_size: int, width: int, depth: int, heads: int):
        super().__init__()
        self.grid = grid
        self.embed = nn.Linear(in_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        trunc_normal_(self.mask_token, std=0.02)
        # Fixed, as in MAE; not saved (recomputed from the grid and width).
        self.register_buffer("positions", build_sincos2d_pos_embed([grid, grid], width)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, patch_size * patch_size * 3)

    def forward(self, kept_tokens: torch.Tensor, kept: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """kept_tokens (B, K, D): the tower's patch tokens of the kept patches KEPT (B, K) long;
        MASKED (B, M) long. Returns the predicted pixels of the masked patches (B, M, p * p * 3),
        in ``patchify``'s order (training/losses/mim.py)."""
        x = self.embed(kept_tokens)
        batch, width = x.shape[0], x.shape[-1]
        grid = self.mask_token.to(x.dtype).expand(batch, self.grid * self.grid, width)
        x = grid.scatter(1, kept[..., None].expand(-1, -1, width), x)
        x = x + self.positions.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x.gather(1, masked[..., None].expand(-1, -1, width)))
