"""RandAugment(2, 7) with X²-VLM's operation lists."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

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


def histogram_cases() -> dict[str, Image.Image]:
    rng = np.random.default_rng(3)
    skewed = (rng.beta(0.5, 4.0, (40, 56, 3)) * 140 + 50).astype(np.uint8)  # narrow and lopsided
    two_values = np.where(rng.random((40, 56, 3)) < 0.3, 90, 200).astype(np.uint8)
    one_band_flat = skewed.copy()
    one_band_flat[..., 1] = 77
    nearly_flat = np.full((40, 56, 3), 100, np.uint8)
    nearly_flat[0, 0] = 101
    return {"noise": noise_image(), "skewed": Image.fromarray(skewed), "two_values": Image.fromarray(two_values),
            "one_band_flat": Image.fromarray(one_band_flat), "nearly_flat": Image.fromarray(nearly_flat),
            "flat": Image.new("RGB", (40, 56), (10, 20, 30))}


def test_autocontrast_and_equalize_are_pillows_exactly():
    for name, image in histogram_cases().items():
        assert np.array_equal(np.asarray(apply_op(image, "AutoContrast", 0.0)),
                              np.asarray(ImageOps.autocontrast(image))), name
        assert np.array_equal(np.asarray(apply_op(image, "Equalize", 0.0)), np.asarray(ImageOps.equalize(image))), name
    stretched = np.asarray(apply_op(histogram_cases()["skewed"], "AutoContrast", 0.0))
    assert stretched.min() == 0 and stretched.max() == 255


def test_every_op_on_rgbx_gives_the_rgb_result():
    """The region decoder's images are RGBX; each op must treat their colour bands as it
    treats an RGB image's."""
    for name, image in histogram_cases().items():
        rgbx = image.convert("RGBX")
        for op in FULL_OPS[1:]:
            for sign in (1.0, -1.0):
                value = magnitude(op, 7) * sign
                expected = np.asarray(apply_op(image, op, value))
                out = apply_op(rgbx, op, value)
                assert out.mode == "RGBX", (name, op)
                assert np.array_equal(np.asarray(out)[..., :3], expected), (name, op, value)
