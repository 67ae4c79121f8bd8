"""Masked image modelling: mean squared error on the masked patches' normalised pixels (MAE).

The `mim` term of image batches, on the reconstruction the model's MIM decoder makes of the
masked patches (training/model/masked_image.py; the model config's `mim.enabled`). The targets
come from the pixels the model was handed (uint8), normalised by the one function that
normalises them for the vision tower (``preprocessing.normalise``). Each target patch is then normalised by its own mean and
standard deviation (MAE's `norm_pix_loss`, with its unbiased variance and 1e-6), which MAE
finds gives better features.
"""
from __future__ import annotations

import torch

from training.model.preprocessing import normalise
from training.objectives import Objective, register_objective

_EPS = 1e-6


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H / patch) x (W / patch), patch x patch x C): patches in raster order,
    each one's values row by row, a pixel's channels together."""
    batch, channels, height, width = pixels.shape
    rows, cols = height // patch, width // patch
    x = pixels.reshape(batch, channels, rows, patch, cols, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, patch * patch * channels)


def masked_image_targets(pixels: torch.Tensor, masked: torch.Tensor, patch: int) -> torch.Tensor:
    """Normalised PIXELS (B, 3, H, W) float32, MASKED (B, M) long -> (B, M, patch x patch x 3) targets."""
    patches = patchify(pixels.float(), patch)
    target = patches.gather(1, masked[..., None].expand(-1, -1, patches.shape[-1]))
    mean = target.mean(dim=-1, keepdim=True)
    variance = target.var(dim=-1, keepdim=True)
    return (target - mean) / (variance + _EPS).sqrt()


def masked_image_loss(predicted: torch.Tensor, pixels: torch.Tensor, masked: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean over the masked patches (the same count on every image and rank) and their values
    of (prediction - target)^2, in fp32; PREDICTED (B, M, patch x patch x 3)."""
    target = masked_image_targets(pixels, masked, patch)
    return (predicted.float() - target).pow(2).mean()


@register_objective
class MaskedImageModelling(Objective):
    name, terms, kinds = "mim", ("mim",), ("image",)

    @classmethod
    def runs_on(cls, weights: dict[str, float], model) -> bool:
        return super().runs_on(weights, model) and model.mim is not None and model.mim.decoder is not None

    def forward(self, batch) -> dict:
        reconstruction = batch.reconstruction
        loss = masked_image_loss(reconstruction.predicted, normalise(reconstruction.images), reconstruction.masked,
                                 reconstruction.patch_size)
        return {"losses": {"mim": loss}, "figures": {}}
