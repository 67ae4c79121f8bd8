"""Crop boxes, box coordinates and patch masks."""
from __future__ import annotations

import math
import random

import numpy as np

from ..config import ConfigError, subkey

CropBox = tuple[int, int, int, int]  # x, y, w, h in pixels


def check_crop_scale(crop_scale: list[float], where: str) -> None:
    """A corpus's `options.crop_scale` is [low, high] with low <= high."""
    low, high = crop_scale
    if low > high:
        raise ConfigError(f"{subkey(where, 'crop_scale')}: expected [low, high] with low <= high, got {crop_scale!r}")


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], rng: random.Random,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> CropBox:
    """torchvision's RandomResizedCrop box, drawn from `rng` so that it is reproducible."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def normalised_cxcywh(x: float, y: float, w: float, h: float, res: int) -> list[float]:
    return [(x + w / 2) / res, (y + h / 2) / res, w / res, h / res]


def patch_mask(x: float, y: float, w: float, h: float, res: int, patch: int) -> np.ndarray:
    """Bool (1 + n*n,): index 0 (the [CLS] position) plus every patch the box overlaps,
    patches numbered row-major; at least one patch even for a sliver of a box."""
    n = res // patch
    x_min = min(math.floor(x / patch), n - 1)
    x_max = max(x_min + 1, min(math.ceil((x + w) / patch), n))
    y_min = min(math.floor(y / patch), n - 1)
    y_max = max(y_min + 1, min(math.ceil((y + h) / patch), n))
    grid = np.zeros((n, n), dtype=bool)
    grid[y_min:y_max, x_min:x_max] = True
    return np.concatenate([[True], grid.reshape(-1)])
