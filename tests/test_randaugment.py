"""RandAugment(2, 7) with X²-VLM's operation lists."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
from PIL import Image, ImageEnhance

from data_pipeline.transforms.randaugment import COLOUR_OPS, FULL_OPS, apply_op, magnitude, sample_plan


def noise_image(seed: int = 0, size: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_brightness_table_is_pillows_enhance_exactly():
    image = noise_image()
    for factor in (0.1, 0.37, 1.0, magnitude("Brightness", 7), 1.9):
        expected = np.asarray(ImageEnhance.Brightness(image).enhance(factor))
        assert np.array_equal(np.asarray(apply_op(image, "Brightness", factor)), expected), factor


def test_magnitudes_at_level_seven():
    assert abs(magnitude("Brightness", 7) - 1.36) < 1e-9 and abs(magnitude("Sharpness", 7) - 1.36) < 1e-9
    assert abs(magnitude("ShearX", 7) - 0.21) < 1e-9 and abs(magnitude("TranslateY", 7) - 7.0) < 1e-9
    assert abs(magnitude("Rotate", 7) - 21.0) < 1e-9 and magnitude("Equalize", 7) == 0.0


def test_plans_draw_two_ops_each_applied_half_the_time():
    rng = random.Random(0)
    plans = [sample_plan(rng, FULL_OPS) for _ in range(20000)]
    lengths = Counter(len(p) for p in plans)
    # each of 2 draws: applied with p 0.5 and not Identity (p 0.9): 0.45
    assert abs(lengths[2] / 20000 - 0.45 ** 2) < 0.01 and abs(lengths[0] / 20000 - 0.55 ** 2) < 0.01
    ops = Counter(op for p in plans for op, _ in p)
    assert set(ops) == set(FULL_OPS) - {"Identity"}
    rotations = [v for p in plans for op, v in p if op == "Rotate"]
    assert {21.0, -21.0} == set(rotations)
    colour = [op for p in (sample_plan(rng, COLOUR_OPS) for _ in range(2000)) for op, _ in p]
    assert set(colour) == {"AutoContrast", "Equalize", "Brightness", "Sharpness"}


def test_geometric_ops_fill_grey_and_colour_ops_keep_size():
    image = Image.new("RGB", (40, 40), (255, 0, 0))
    shifted = np.asarray(apply_op(image, "TranslateX", 7.0))
    assert (shifted[:, -7:] == 128).all() and (shifted[:, :-7] == (255, 0, 0)).all()
    for op in COLOUR_OPS[1:]:
        assert apply_op(noise_image(), op, magnitude(op, 7)).size == (48, 48)
