"""Synthetic batches in the layout the data pipeline feeds the model (tiny config sizes):
uint8 pixels, as the loader hands them and the vision tower takes them."""
from __future__ import annotations

import torch

IMAGE_SIZE = 64
NUM_PATCHES = 16  # 64 px / 16 px patches, squared


def _pixels(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def _texts(generator: torch.Generator, count: int, length: int) -> dict:
    text_ids = torch.randint(1000, 2000, (count, length), generator=generator)
    text_ids[:, 0] = 101
    text_mask = torch.ones(count, length, dtype=torch.long)
    text_mask[0, length // 2 :] = 0  # one padded text
    text_ids = text_ids * text_mask
    mlm_labels = torch.full((count, length), -100)
    mlm_labels[:, 1] = text_ids[:, 1]
    mlm_labels[1:, 2] = text_ids[1:, 2]
    mlm_ids = torch.where(mlm_labels == -100, text_ids, torch.full_like(text_ids, 103))
    return {"text_ids": text_ids, "text_mask": text_mask, "mlm_ids": mlm_ids, "mlm_labels": mlm_labels}


def image_batch(seed: int = 0, count: int = 4, length: int = 8) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"images": _pixels(generator, count, 3, IMAGE_SIZE, IMAGE_SIZE), **_texts(generator, count, length)}


def region_batch(seed: int = 0, images: int = 2, length: int = 8, patches: int = NUM_PATCHES) -> dict:
    generator = torch.Generator().manual_seed(seed)
    image_index = torch.tensor([0, 0, 1, 1, 1])[: 2 * images + 1].clamp(max=images - 1)
    count = len(image_index)
    patch_mask = torch.zeros(count, 1 + patches, dtype=torch.bool)
    patch_mask[:, 0] = True
    for r in range(count):
        start = r % 3
        patch_mask[r, 1 + start : 1 + start + 4 + r] = True
    boxes = torch.rand(count, 4, generator=generator) * 0.4 + 0.2
    return {
        "images": _pixels(generator, images, 3, IMAGE_SIZE, IMAGE_SIZE),
        "image_index": image_index,
        "patch_mask": patch_mask,
        "boxes": boxes,
        **_texts(generator, count, length),
    }


def video_batch(seed: int = 0, count: int = 2, frames: int = 3, length: int = 8) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "frames": _pixels(generator, count, frames, 3, IMAGE_SIZE, IMAGE_SIZE),
        **_texts(generator, count, length),
    }
