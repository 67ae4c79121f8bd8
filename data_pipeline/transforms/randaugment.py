"""RandAugment(N=2, M=7) with X²-VLM's operation lists, on PIL images in mode RGB or
RGBX (the region decoder's layout; its X band is carried along untouched).

X²-VLM draws N operations (with replacement) and applies each with probability 0.5 at
magnitude M of 10: enhance factor 0.1 + 1.8 * M / 10, shear 0.3 * M / 10, translation
10 * M / 10 pixels, rotation 30 * M / 10 degrees (the geometric ones with a random sign,
filled with grey 128). A plan is drawn once and can be applied to several images, so all
frames of a clip get the same augmentation.
"""
from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageEnhance

MAX_LEVEL = 10
FILL = (128, 128, 128)

FULL_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
            "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# Region crops keep their boxes, so only colour operations apply.
COLOUR_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness")
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}

Plan = list[tuple[str, float]]


def magnitude(op: str, level: int) -> float:
    fraction = level / MAX_LEVEL
    if op in ("Brightness", "Sharpness"):
        return 0.1 + 1.8 * fraction
    if op in ("ShearX", "ShearY"):
        return 0.3 * fraction
    if op in ("TranslateX", "TranslateY"):
        return 10.0 * fraction
    if op == "Rotate":
        return 30.0 * fraction
    return 0.0


def sample_plan(rng: random.Random, ops: tuple[str, ...] = FULL_OPS, n: int = 2, level: int = 7) -> Plan:
    plan = []
    for _ in range(n):
        op = ops[rng.randrange(len(ops))]
        apply = rng.random() < 0.5
        sign = -1.0 if rng.random() < 0.5 else 1.0
        if apply and op != "Identity":
            plan.append((op, magnitude(op, level) * (sign if op in SIGNED else 1.0)))
    return plan


_IDENTITY = np.arange(256, dtype=np.int64)
_IDENTITY_LIST = _IDENTITY.tolist()  # a table for a band left as it is (RGBX's X)


@lru_cache(maxsize=64)
def _brightness_table(factor: float) -> list[int]:
    """ImageEnhance.Brightness blends with a black image, truncating factor * v in float32;
    the same as a lookup table, without building the black image or the blend."""
    scaled = np.float32(factor) * np.arange(256, dtype=np.float32)
    return np.clip(scaled.astype(np.int64), 0, 255).tolist()


def _autocontrast_table(histogram: np.ndarray) -> np.ndarray:
    """ImageOps.autocontrast's table for one band: its lowest and highest values stretched
    to 0 and 255, as int(v * scale + offset) in double precision."""
    present = np.flatnonzero(histogram)
    if len(present) == 0 or present[-1] <= present[0]:
        return _IDENTITY
    lo, hi = int(present[0]), int(present[-1])
    scale = 255.0 / (hi - lo)
    return np.clip((_IDENTITY * scale + -lo * scale).astype(np.int64), 0, 255)


def _equalize_table(histogram: np.ndarray) -> np.ndarray:
    """ImageOps.equalize's table for one band: (step // 2 + pixels below v) // step, where
    step is the pixel count without the highest value's, divided by 255."""
    present = histogram[histogram > 0]
    step = (int(present.sum()) - int(present[-1])) // 255 if len(present) > 1 else 0
    if not step:
        return _IDENTITY
    below = np.concatenate(([0], np.cumsum(histogram)[:-1]))
    return np.clip((step // 2 + below) // step, 0, 255)


def _per_band(image: Image.Image, table) -> Image.Image:
    """Applies a table computed from each colour band's histogram; an X band stays as it is."""
    histograms = np.asarray(image.histogram(), dtype=np.int64).reshape(-1, 256)
    tables = [table(h) for h in histograms[:3]] + [_IDENTITY] * (len(histograms) - 3)
    return image.point(np.concatenate(tables).tolist())


def apply_op(image: Image.Image, op: str, value: float) -> Image.Image:
    if op == "AutoContrast":
        return _per_band(image, _autocontrast_table)
    if op == "Equalize":
        return _per_band(image, _equalize_table)
    if op == "Brightness":
        table = _brightness_table(value)
        return image.point(table * 3 + _IDENTITY_LIST * (len(image.getbands()) - 3))
    if op == "Sharpness":
        return ImageEnhance.Sharpness(image).enhance(value)
    if op == "ShearX":
        return image.transform(image.size, Image.AFFINE, (1, value, 0, 0, 1, 0), fillcolor=FILL)
    if op == "ShearY":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, value, 1, 0), fillcolor=FILL)
    if op == "TranslateX":
        return image.transform(image.size, Image.AFFINE, (1, 0, value, 0, 1, 0), fillcolor=FILL)
    if op == "TranslateY":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, 0, 1, value), fillcolor=FILL)
    if op == "Rotate":
        return image.rotate(value, fillcolor=FILL)
    raise ValueError(f"unknown RandAugment operation {op!r}")


def apply_plan(image: Image.Image, plan: Plan) -> Image.Image:
    for op, value in plan:
        image = apply_op(image, op, value)
    return image
