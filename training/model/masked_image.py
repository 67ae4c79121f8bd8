"""Masked image modelling (FLAVA, VLMAE, MAE) and masked-patch dropping (FLIP) on the
image-text batches; the model config's ``mim`` section. The model's part: the masked tower
passes and the decoder's reconstruction of the masked patches; the `image/mim` loss on it is
the MIM objective's (training/objectives/mim.py).

Every image-text step draws, per image, a block-wise mask of ``round(mask_ratio x patches)``
patches on the device (patch_masking.py). Which pass sees which patches:

- ``drop_masked: false`` (with ``enabled``): ITC, ITM and MLM read the usual tower pass over
  every patch. MIM runs a second tower pass over the kept patches only (MAE's encoder: the
  masked ones are left out, not replaced, so nothing of them can leak into the tokens) and the
  decoder reconstructs the masked patches from it. Extra cost: about (1 - ratio) of a tower
  pass plus the decoder.
- ``drop_masked: true``: one tower pass over the kept patches only, shared by ITC (token 0 is
  the mean of the kept patches), ITM and MLM (the fusion layers attend to the kept patches)
  and, with ``enabled``, MIM. The tower costs about (1 - ratio) of a full pass. FLIP trains
  its contrastive loss this way; here the fusion losses see the same masked view, which spares
  a second full pass and asks the text side to match and fill in from part of the picture.
- Region and video batches always see every patch (a region's box, the box head and the
  frames need the whole grid); evaluation and inference (``encode_image``) always see every
  patch: FLIP finds a model trained on masked images is evaluated well unmasked, and a few
  final steps with ``drop_masked: false`` close the remaining gap ("unmasked tuning").

All shapes are fixed by the configuration (kept = patches - masked), and nothing is read on
the host.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from data_pipeline.config import ConfigError
from training.model.mim_decoder import MaskedImageDecoder
from training.model.model_config import MimConfig
from training.model.patch_masking import PatchMasks, block_masks, masked_count
from training.model.vision import VisionTower


@dataclasses.dataclass
class Reconstruction:
    """The MIM decoder's output for a batch of images."""
    predicted: torch.Tensor  # (B, M, patch x patch x 3): each masked patch's normalised pixels
    masked: torch.Tensor  # (B, M) long: the masked patches, in raster order
    images: torch.Tensor  # (B, 3, H, W) uint8: the pixels the targets come from
    patch_size: int


class MaskedImageModelling(nn.Module):
    def __init__(self, config: MimConfig, tower: VisionTower, vision_name: str):
        super().__init__()
        if not tower.can_keep_patches:
            raise ConfigError(f"mim: masked image modelling and masked-patch dropping leave patches out of the vision "
                              f"tower, which a ViT or BEiT can and vision.name {vision_name!r} cannot")
        tower.enable_kept_patches()
        self.config = config
        self.grid = tower.grid_size
        self.patch_size = tower.patch_size
        self.count = masked_count(tower.num_patches, config.mask_ratio)
        self.decoder = None
        if config.enabled:
            self.decoder = MaskedImageDecoder(tower.width, self.grid, self.patch_size, config.decoder_width,
                                              config.decoder_depth, config.decoder_heads)

    def draw(self, images: torch.Tensor) -> PatchMasks:
        return block_masks(images.shape[0], self.grid, self.count, images.device)

    def forward(self, tower: VisionTower, images: torch.Tensor,
                masks: PatchMasks | None = None) -> tuple[torch.Tensor, Reconstruction | None]:
        """uint8 IMAGES -> (the tokens ITC, ITM and MLM read, the decoder's reconstruction or
        None without a decoder). MASKS: drawn here unless given."""
        masks = self.draw(images) if masks is None else masks
        kept_tokens = tower(images, keep=masks.kept)
        tokens = kept_tokens if self.config.drop_masked else tower(images)
        if self.decoder is None:
            return tokens, None
        predicted = self.decoder(kept_tokens[:, 1:], masks.kept, masks.masked)
        return tokens, Reconstruction(predicted, masks.masked, images, self.patch_size)
