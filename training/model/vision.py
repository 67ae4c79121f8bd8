"""The vision tower: any timm backbone, returning X²-VLM's token layout.

Output tokens are ``[mean of patch tokens, patch tokens]`` of shape (B, 1 + num_patches, D).
The backbone's own class token output is not used: token 0 is the mean of the patch tokens, so
that a region's token 0 can be computed the same way from only the patches it covers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from torch import nn

from data_pipeline.config import ConfigError
from training.model.checkpoint_files import read_state_dict
from training.model.kept_patches import enable_kept_patches, kept_patch_features, supports_kept_patches
from training.model.model_config import VisionConfig
from training.model.preprocessing import normalise


class VisionTower(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        try:
            self.trunk = timm.create_model(
                config.name,
                pretrained=False,
                num_classes=0,
                img_size=config.image_size,
                drop_path_rate=config.drop_path_rate,
                **config.timm_kwargs,
            )
        except TypeError as error:  # an argument the timm model does not take
            raise ConfigError(f"vision.timm_kwargs: timm's {config.name} refuses them: {error}") from None
        self.width = self.trunk.num_features
        self.num_prefix_tokens = getattr(self.trunk, "num_prefix_tokens", 0)
        stride = self.trunk.feature_info[-1]["reduction"]
        self.grid_size = config.image_size // stride
        self.num_patches = self.grid_size**2
        self.patch_size = stride

    @property
    def can_keep_patches(self) -> bool:
        """Whether ``forward(images, keep=...)`` can leave patches out (ViT, BEiT; not Swin)."""
        return supports_kept_patches(self.trunk)

    def enable_kept_patches(self) -> None:
        enable_kept_patches(self.trunk)

    def _patch_tokens(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() == 4:  # Swin: (B, H, W, C)
            return features.flatten(1, 2)
        return features[:, self.num_prefix_tokens:]

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 pixels (B, 3, H, W) -> tokens (B, 1 + num_patches, D); see preprocessing.py.

        With KEEP (B, K) long (ascending patch indices; after ``enable_kept_patches``) only
        those patches go through the trunk: tokens (B, 1 + K, D), token 0 their mean."""
        # Normalised in float32, then in the weights' dtype (bf16 under DeepSpeed bf16).
        images = normalise(images).to(self.trunk.patch_embed.proj.weight.dtype)
        if keep is None:
            features = self.trunk.forward_features(images)
        else:
            features = kept_patch_features(self.trunk, images, keep)
        patches = self._patch_tokens(features)
        # BEiT with mean pooling normalises after pooling (fc_norm); X²-VLM normalises each patch
        # token with it and pools afterwards, which is what makes region pooling consistent.
        fc_norm = getattr(self.trunk, "fc_norm", None)
        if fc_norm is not None:
            patches = fc_norm(patches)
        return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)

    def set_grad_checkpointing(self, enable: bool) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def load_pretrained(self, path: str | Path) -> tuple[list[str], list[str]]:
        """Loads a local timm or original BEiT checkpoint; returns (missing, unexpected) keys."""
        state = read_state_dict(path)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state = _expand_shared_relative_position_bias(state, self.trunk)
        # timm's own filter resizes position embeddings and relative position tables to this size.
        filter_fn = getattr(sys.modules[type(self.trunk).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, self.trunk)
        result = self.trunk.load_state_dict(state, strict=False)
        return list(result.missing_keys), list(result.unexpected_keys)


def _expand_shared_relative_position_bias(state: dict, trunk: nn.Module) -> dict:
    """BEiT pre-training checkpoints share one relative position table; timm keeps one per block."""
    shared = state.pop("rel_pos_bias.relative_position_bias_table", None)
    if shared is None or getattr(trunk, "rel_pos_bias", None) is not None:
        if shared is not None:
            state["rel_pos_bias.relative_position_bias_table"] = shared
        return state
    for i in range(len(trunk.blocks)):
        state.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared.clone())
    return state
