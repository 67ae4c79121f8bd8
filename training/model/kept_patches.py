"""The vision trunk over a subset of its patches (FLIP, MAE): the masked patches are left out
of the token sequence after the position embedding, so every block costs in proportion to the
patches kept.

ViT: patch embedding, class / register tokens and absolute positions, then the kept tokens
only through timm's blocks. BEiT: its relative position bias is a table indexed by the pair
of positions; its attention modules are given ``KeptTokenAttention`` as class (same
parameters, same computation on the full sequence), which looks the bias up for the kept
positions when the block is handed a ``KeptPositions`` in place of the shared bias. The blocks
themselves stay timm's, called as modules (DeepSpeed ZeRO-3 gathers their parameters in their
forward). Swin's windows need the whole grid: it cannot leave patches out.
"""
from __future__ import annotations

import dataclasses

import torch
from timm.models.beit import Attention as BeitAttention
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclasses.dataclass
class KeptPositions:
    """What a BEiT block needs to attend among the kept tokens only."""
    tokens: torch.Tensor  # (B, T) long: places in the full sequence (class token 0, patch p at 1 + p)
    shared_bias: torch.Tensor | None  # (B, heads, T, T) the shared relative bias at those places, if any


class KeptTokenAttention(BeitAttention):
    """timm's BEiT attention; with ``KeptPositions`` its relative bias covers the kept tokens."""

    _kept: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, shared_rel_pos_bias=None) -> torch.Tensor:
        if not isinstance(shared_rel_pos_bias, KeptPositions):
            return super().forward(x, shared_rel_pos_bias)
        # Set for the length of this call only: an activation-checkpointing recompute calls
        # forward again with the same arguments.
        self._kept = shared_rel_pos_bias.tokens
        try:
            return super().forward(x, shared_rel_pos_bias.shared_bias)
        finally:
            self._kept = None

    def _get_rel_pos_bias(self) -> torch.Tensor:
        if self._kept is None:
            return super()._get_rel_pos_bias()
        tokens = self._kept
        pairs = self.relative_position_index[tokens[:, :, None], tokens[:, None, :]]  # (B, T, T)
        return self.relative_position_bias_table[pairs].permute(0, 3, 1, 2)  # (B, heads, T, T)


def supports_kept_patches(trunk: nn.Module) -> bool:
    return isinstance(trunk, (Beit, VisionTransformer))


def enable_kept_patches(trunk: nn.Module) -> None:
    """Prepares TRUNK (before DeepSpeed wraps it) for ``kept_patch_features``."""
    if not supports_kept_patches(trunk):
        raise TypeError(f"{type(trunk).__name__} cannot leave patches out (only ViT and BEiT can)")
    if isinstance(trunk, Beit):
        for block in trunk.blocks:
            if type(block.attn) is BeitAttention:
                block.attn.__class__ = KeptTokenAttention


def _gather_tokens(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return x.gather(1, tokens[..., None].expand(-1, -1, x.shape[-1]))


def _token_places(keep: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, prefix + K): the prefix tokens, then the kept patches' places in the full sequence."""
    batch = keep.shape[0]
    head = torch.arange(prefix, device=keep.device).expand(batch, prefix)
    return torch.cat([head, keep + prefix], dim=1)


def kept_patch_features(trunk: nn.Module, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``trunk.forward_features`` over the kept patches: (B, prefix + K, D), for normalised
    IMAGES (B, 3, H, W) and KEEP (B, K) long, ascending patch indices in raster order."""
    if isinstance(trunk, Beit):
        return _beit(trunk, images, keep)
    if isinstance(trunk, VisionTransformer):
        return _vit(trunk, images, keep)
    raise TypeError(f"{type(trunk).__name__} cannot leave patches out (only ViT and BEiT can)")


def _beit(trunk: Beit, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    x = trunk.patch_embed(images)
    x = torch.cat((trunk.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    if trunk.pos_embed is not None:
        x = x + trunk.pos_embed
    tokens = _token_places(keep, 1)
    x = trunk.pos_drop(_gather_tokens(x, tokens))
    shared = None
    if trunk.rel_pos_bias is not None:
        full = trunk.rel_pos_bias()  # (heads, N, N)
        shared = full[:, tokens[:, :, None], tokens[:, None, :]].transpose(0, 1)
    kept = KeptPositions(tokens, shared)
    for block in trunk.blocks:
        if trunk.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, kept, use_reentrant=False)
        else:
            x = block(x, shared_rel_pos_bias=kept)
    return trunk.norm(x)


def _vit(trunk: VisionTransformer, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    x = trunk._pos_embed(trunk.patch_embed(images))
    x = _gather_tokens(x, _token_places(keep, trunk.num_prefix_tokens))
    x = trunk.norm_pre(trunk.patch_drop(x))
    for block in trunk.blocks:
        if trunk.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return trunk.norm(x)
