"""What the model expects of its pixels, and the one place they are normalised.

Every caller (the training loader, evaluation, inference, tests, benchmarks) hands the
vision tower uint8 (B, 3, H, W) pixels; the tower normalises them with CLIP's mean and
standard deviation, as X²-VLM does, on the device as its first step: a quarter of the
bytes to move and no per-pixel float work on the loader's cores.
"""
from __future__ import annotations

from functools import lru_cache

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# On the 0-255 scale of the pixels, so that normalising is one subtraction and one division.
_MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255
_STD = torch.tensor(CLIP_STD).view(3, 1, 1) * 255


@lru_cache(maxsize=None)
def _mean_std_on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Once per device: a copy to the GPU in every step would wait for the stream.
    return _MEAN.to(device), _STD.to(device)


def check_pixels(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8:
        raise TypeError(f"the vision tower takes uint8 pixels (..., 3, H, W) in 0-255 and normalises them itself; "
                        f"got a {images.dtype} tensor of shape {tuple(images.shape)}")


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 with CLIP mean and std, on the images' device."""
    check_pixels(images)
    mean, std = _mean_std_on(images.device)
    return images.float().sub_(mean).div_(std)
