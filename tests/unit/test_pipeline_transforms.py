"""Transforms: text-aware flip, region boxes and patch masks, video clips, draft decoding."""
from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.demo_corpus.drawing import encode_mp4
from data_pipeline.media.image_decode import crop_resize, open_image
from data_pipeline.spec import TextSpec
from data_pipeline.transforms import ImageTextOptions, RegionOptions, VideoTextOptions
from data_pipeline.text import TextEncoder
from data_pipeline.transforms import ImageTextTransform, RegionTransform, VideoTextTransform
from data_pipeline.transforms.flip import swap_sides
from data_pipeline.transforms.geometry import patch_mask
from data_pipeline.media.video_decode import segment_frame_indices
from pipeline_helpers import demo_tokenizer  # noqa: F401  (fixture)

RED, BLUE, GREEN, GREY = (220, 30, 30), (30, 70, 220), (30, 160, 50), (128, 128, 128)


@pytest.fixture(scope="module")
def text(demo_tokenizer):
    return TextEncoder(TextSpec(str(demo_tokenizer), max_tokens=24))


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def red_left_blue_right(width=200, height=160) -> Image.Image:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = RED
    array[:, width // 2:] = BLUE
    return Image.fromarray(array)


def image_sample(key: str, image: Image.Image, captions: list[str], regions=()) -> dict:
    meta = {"source": "test", "width": image.width, "height": image.height, "captions": captions,
            "regions": list(regions), "original": {}}
    return {"__key__": key, "jpg": jpeg(image), "json": json.dumps(meta).encode()}


def hwc(image: np.ndarray) -> np.ndarray:
    """A transform's uint8 (H, W, 3) pixels as floats."""
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    return image.astype(np.float64)


def redness(pixels: np.ndarray) -> float:
    return float(pixels[..., 0].mean() - pixels[..., 2].mean())


def decoded_text(text: TextEncoder, ids: np.ndarray) -> str:
    return text.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def test_swap_sides():
    assert swap_sides("Left of the right one, leftmost; RIGHT") == "Right of the left one, rightmost; LEFT"
    assert swap_sides("a bright light") == "a bright light"


@pytest.mark.parametrize("mode", ["swap", "skip"])
def test_flip_keeps_caption_true(text, mode):
    options = ImageTextOptions(crop_scale=[0.9, 1.0], flip=mode)
    transform = ImageTextTransform(64, options, text)
    image = red_left_blue_right()
    flips = []
    for i in range(24):
        out = transform(image_sample(f"t_{i}", image, ["a red square to the left of a blue square"]), random.Random(i))
        pixels = hwc(out["image"])
        red_on_left = redness(pixels[:, :20]) > redness(pixels[:, -20:])
        caption = decoded_text(text, out["text_ids"])
        assert caption in ("a red square to the left of a blue square", "a red square to the right of a blue square")
        assert red_on_left == ("to the left of" in caption), (i, caption)
        assert out["flipped"] == (not red_on_left)
        flips.append(out["flipped"])
    if mode == "swap":
        assert 4 <= sum(flips) <= 20  # both branches were exercised
    else:
        assert not any(flips)
        # A caption without sides may still be flipped in skip mode.
        plain = [transform(image_sample(f"p_{i}", image, ["a red square and a blue square"]), random.Random(i))
                 for i in range(24)]
        assert 4 <= sum(o["flipped"] for o in plain) <= 20


def test_flip_off_never_flips(text):
    options = ImageTextOptions(flip="off", crop_scale=[0.9, 1.0])
    transform = ImageTextTransform(64, options, text)
    image = red_left_blue_right()
    for i in range(12):
        pixels = hwc(transform(image_sample(f"o_{i}", image, ["a red and a blue"]), random.Random(i))["image"])
        assert redness(pixels[:, :20]) > redness(pixels[:, -20:])


def test_patch_mask_on_known_boxes():
    # 64 px, 16 px patches: a 4 x 4 grid, index = 1 + 4 * row + col.
    def expected(*indices):
        mask = np.zeros(17, dtype=bool)
        mask[[0, *indices]] = True
        return mask

    assert np.array_equal(patch_mask(8, 8, 16, 16, 64, 16), expected(1, 2, 5, 6))
    assert np.array_equal(patch_mask(16, 16, 16, 16, 64, 16), expected(6))  # edges on patch borders
    assert np.array_equal(patch_mask(60, 60, 4, 4, 64, 16), expected(16))
    assert np.array_equal(patch_mask(0, 0, 64, 64, 64, 16), np.ones(17, dtype=bool))
    assert np.array_equal(patch_mask(33, 2, 0.5, 40, 64, 16), expected(3, 7, 11))  # a sliver


def independent_mask(box, res, patch):
    """Patch (row, col) is in when its square and the box overlap with positive area."""
    x, y, w, h = box
    n = res // patch
    mask = [True]
    for row in range(n):
        for col in range(n):
            mask.append(x < (col + 1) * patch and x + w > col * patch and y < (row + 1) * patch and y + h > row * patch)
    return np.array(mask)


REGIONS = [  # box, colour, text
    ([10, 20, 40, 30], RED, "the red box on the left"),
    ([120, 90, 60, 50], BLUE, "the blue box at the bottom right"),
    ([150, 10, 30, 30], GREEN, "the green box at the top right"),
]


def test_region_boxes_and_patch_masks(text):
    res, patch = 64, 16
    image = Image.new("RGB", (200, 160), GREY)
    pixels_in = np.asarray(image).copy()
    for (x, y, w, h), colour, _ in REGIONS:
        pixels_in[y:y + h, x:x + w] = colour
    image = Image.fromarray(pixels_in)
    regions = [{"box": box, "captions": [t], "label": None} for box, _, t in REGIONS]
    options = RegionOptions(max_regions=10)
    transform = RegionTransform(res, patch, options, text)
    seen_flip = set()
    for i in range(30):
        out = transform(image_sample(f"r_{i}", image, ["three boxes"], regions), random.Random(i))
        cx0, cy0, cw, ch = out["crop"]
        flip = out["flipped"]
        seen_flip.add(flip)
        assert out["texts"][0] == "three boxes"
        assert out["boxes"][0].tolist() == [0.5, 0.5, 1.0, 1.0] and out["patch_mask"][0].all()
        pixels = hwc(out["image"])
        # Independently: which regions lie more than half inside the crop, and where they land.
        expected = {}
        for (x, y, w, h), colour, caption in REGIONS:
            ix0, iy0, ix1, iy1 = max(x, cx0), max(y, cy0), min(x + w, cx0 + cw), min(y + h, cy0 + ch)
            if ix1 <= ix0 or iy1 <= iy0 or (ix1 - ix0) * (iy1 - iy0) <= 0.5 * w * h:
                continue
            left = cw - (ix1 - cx0) if flip else ix0 - cx0
            bx, by, bw, bh = left * res / cw, (iy0 - cy0) * res / ch, (ix1 - ix0) * res / cw, (iy1 - iy0) * res / ch
            text_out = swap_sides(caption) if flip else caption
            expected[text_out] = ((bx, by, bw, bh), colour)
        assert sorted(out["texts"][1:]) == sorted(expected)
        for text_out, box, mask in zip(out["texts"][1:], out["boxes"][1:], out["patch_mask"][1:]):
            (bx, by, bw, bh), colour = expected[text_out]
            want = [(bx + bw / 2) / res, (by + bh / 2) / res, bw / res, bh / res]
            assert np.allclose(box, want, atol=1e-5), (i, text_out, box, want)
            assert np.array_equal(mask, independent_mask((bx, by, bw, bh), res, patch)), (i, text_out)
            # The pixels at the box centre have the region's colour.
            cx, cy = int((bx + bw / 2)), int((by + bh / 2))
            centre = pixels[cy, cx]
            assert np.argmax(centre) == np.argmax(colour), (i, text_out, centre)
    assert seen_flip == {True, False}


def test_region_crop_keeps_its_minimum_side(text):
    """`crop_min_side` bounds how far a region crop zooms: every crop contains the picked region
    and keeps that fraction of each side; 1 is the whole image, 0 reaches down to the region."""
    image = Image.new("RGB", (200, 160), GREY)
    regions = [{"box": box, "captions": [t], "label": None} for box, _, t in REGIONS]
    sides = {}
    for min_side in (0.0, 0.8, 1.0):
        transform = RegionTransform(64, 16, RegionOptions(max_regions=10, crop_min_side=min_side), text)
        crops = [transform(image_sample(f"r_{i}", image, ["three boxes"], regions), random.Random(i))["crop"]
                 for i in range(40)]
        for x, y, w, h in crops:
            assert 0 <= x and 0 <= y and x + w <= 200 and y + h <= 160
            assert w >= min_side * 200 and h >= min_side * 160
            # The picked region (which the sample's first region text names) lies inside.
            assert any(x <= bx and y <= by and bx + bw <= x + w and by + bh <= y + h for (bx, by, bw, bh), _, _ in REGIONS)
        sides[min_side] = min(w / 200 for _, _, w, _ in crops)
    assert sides[1.0] == 1.0 and sides[0.8] >= 0.8 > sides[0.0]


def test_region_sample_without_valid_box_is_bad(text):
    from data_pipeline.skips import BadSample
    transform = RegionTransform(64, 16, RegionOptions(), text)
    image = Image.new("RGB", (100, 80), GREY)
    for box in ([90, 10, 30, 20], [10, 10, 0, 5], [-5, 0, 10, 10], [1, 2, "x", 4]):
        with pytest.raises(BadSample) as info:
            transform(image_sample("bad", image, ["x"], [{"box": box, "captions": ["y"], "label": None}]),
                      random.Random(0))
        assert (info.value.reason, list(info.value.dropped)) == ("no_region", ["bad_box"])
    # A bad box or a malformed entry beside good regions costs only itself, counted; a corpus
    # reading the sample for its captions does not see it.
    sample = image_sample("mixed", image, ["x"], [{"box": [10, 10, 20, 20], "captions": ["good"], "label": None},
                                                  {"box": [90, 10, 30, 20], "captions": ["outside"], "label": None},
                                                  "not a region"])
    out = transform(sample, random.Random(0))
    assert out["texts"] == ["x", "good"] and sorted(out["skipped"]) == ["bad_box", "bad_region"]
    assert ImageTextTransform(64, ImageTextOptions(), text)(sample, random.Random(0))["key"] == "mixed"
    # A region without captions speaks through its label (coco instances).
    out = transform(image_sample("lab", image, [], [{"box": [10, 10, 20, 20], "captions": [], "label": "circle"}]),
                    random.Random(0))
    assert out["texts"] == ["circle"]


def test_segment_sampling():
    assert segment_frame_indices(0, 16, 3, False, random.Random(0)) == [2, 7, 12]
    assert segment_frame_indices(4, 9, 3, False, random.Random(0)) == [5, 8, 11]
    assert segment_frame_indices(0, 2, 3, False, random.Random(0)) == [0, 0, 1]
    for seed in range(20):
        a, b, c = segment_frame_indices(0, 16, 3, True, random.Random(seed))
        assert 0 <= a < 5 <= b < 10 <= c < 16


def test_video_clip_shares_crop_and_flip(text):
    frames = [np.asarray(red_left_blue_right(96, 96))] * 10
    meta = {"source": "test", "captions": ["red on the left"], "regions": [], "fps": 8, "duration": 1.25,
            "start": None, "end": None, "frames": 10}
    sample = {"__key__": "v_1", "mp4": encode_mp4(frames, 8), "json": json.dumps(meta).encode()}
    transform = VideoTextTransform(32, VideoTextOptions(frames=4), text)
    flips = set()
    for i in range(10):
        out = transform(sample, random.Random(i))
        assert out["frames"].shape == (4, 32, 32, 3) and out["frames"].dtype == np.uint8
        # The same crop, flip and augmentation on every frame of this static clip.
        for frame in out["frames"][1:]:
            assert np.abs(frame.astype(np.int16) - out["frames"][0]).max() <= 10
        pixels = hwc(out["frames"][0])
        red_on_left = redness(pixels[:, :10]) > redness(pixels[:, -10:])
        assert red_on_left == ("left" in decoded_text(text, out["text_ids"]))
        flips.add(out["flipped"])
    assert flips == {True, False}


def test_jpeg_draft_decoding_matches_full_decoding():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((640, 480), Image.BICUBIC)  # smooth, so scales agree
    data = jpeg(big)
    box = (40, 30, 480, 400)
    drafted = np.asarray(crop_resize(open_image(data), box, (64, 64)).convert("RGB"), dtype=np.float32)
    full_image = Image.open(io.BytesIO(data)).convert("RGB")
    full = np.asarray(full_image.resize((64, 64), Image.BICUBIC, box=(40, 30, 520, 430)), dtype=np.float32)
    assert drafted.shape == (64, 64, 3)
    assert np.abs(drafted - full).mean() < 4.0
    # And the draft really decoded at a reduced scale.
    probe = Image.open(io.BytesIO(data))
    probe.draft("RGB", (int(640 * 64 / 480) + 1, int(480 * 64 / 400) + 1))
    assert probe.size[0] < 640


def test_collate_keeps_pixels_uint8_and_region_texts_ragged():
    from data_pipeline.kinds.collate import collate_image_text, collate_region, collate_video_text

    def texts(n):
        return {name: np.full((n, 4), 7, dtype=np.int64) for name in ("text_ids", "text_mask", "mlm_ids", "mlm_labels")}

    # (H, W, 3) pixels, as the transforms make them
    pixels = [np.arange(i * 18, i * 18 + 18, dtype=np.uint8).reshape(2, 3, 3) for i in range(2)]
    batch = collate_image_text([{"image": pixels[0], **{k: v[0] for k, v in texts(1).items()}, "key": "a"},
                                {"image": pixels[1], **{k: v[0] for k, v in texts(1).items()}, "key": "b"}])
    assert batch["images"].dtype == torch.uint8 and batch["keys"] == ["a", "b"]
    assert batch["images"].shape == (2, 3, 2, 3)
    for b in range(2):
        for c in range(3):
            assert batch["images"][b, c].tolist() == pixels[b][:, :, c].tolist()
    clips = [np.stack([p, 255 - p]) for p in pixels]  # (F=2, H, W, 3)
    batch = collate_video_text([{"frames": clips[b], **{k: v[0] for k, v in texts(1).items()}, "key": str(b)}
                                for b in range(2)])
    assert batch["frames"].shape == (2, 2, 3, 2, 3)
    assert batch["frames"][1, 1, 2].tolist() == (255 - pixels[1][:, :, 2]).tolist()
    assert batch["frames"].flatten(0, 1).shape == (4, 3, 2, 3)  # as the video encoder reads them
    white = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    regions = [{"image": white.permute(1, 2, 0).numpy(), **texts(n), "boxes": np.zeros((n, 4), np.float32),
                "patch_mask": np.ones((n, 17), bool), "key": f"r{n}"} for n in (3, 1, 2)]
    batch = collate_region(regions)
    assert batch["images"].shape == (3, 3, 2, 2)
    assert batch["image_index"].tolist() == [0, 0, 0, 1, 2, 2]
    assert batch["text_ids"].shape == (6, 4) and batch["boxes"].shape == (6, 4) and batch["patch_mask"].shape == (6, 17)


def test_evaluation_mode_is_plain_resize(text):
    image = red_left_blue_right()
    sample = image_sample("e_1", image, ["a red square to the left of a blue square"])
    transform = ImageTextTransform(64, ImageTextOptions(), text, training=False)
    outs = [transform(sample, random.Random(seed)) for seed in range(6)]
    for out in outs[1:]:
        assert np.array_equal(out["image"], outs[0]["image"])
    pixels = hwc(outs[0]["image"])
    assert redness(pixels[:, :30]) > 150 and redness(pixels[:, 34:]) < -150  # whole image, unflipped


def test_collate_lists_masked_positions_first_and_bounds_rows_per_kind():
    from types import SimpleNamespace

    from data_pipeline.kinds.collate import collate_region, mlm_positions, rows_per_batch

    labels = np.full((3, 6), -100)
    labels[0, [4, 1]] = 7
    labels[1, 2] = 9  # row 2: nothing masked
    positions = mlm_positions(labels)
    assert positions.tolist() == [[1, 4], [2, 0], [0, 1]]  # masked ones in order, then unmasked ones
    regions = [{"image": np.zeros((2, 2, 3), np.uint8), "text_ids": np.ones((n, 6), np.int64),
                "text_mask": np.ones((n, 6), np.int64), "mlm_ids": np.ones((n, 6), np.int64),
                "mlm_labels": labels[:n], "boxes": np.zeros((n, 4), np.float32),
                "patch_mask": np.ones((n, 5), bool), "key": str(n)} for n in (2, 3)]
    batch = collate_region(regions)
    assert batch["mlm_positions"].tolist() == [[1, 4], [2, 0], [1, 4], [2, 0], [0, 1]]

    def corpus(kind, batch_size, max_regions=6):
        return SimpleNamespace(kind=kind, batch_size=batch_size, options=SimpleNamespace(max_regions=max_regions))

    assert rows_per_batch([corpus("image_text", 16), corpus("image_text", 12)]) == 16
    assert rows_per_batch([corpus("region", 8, 4), corpus("region", 6)]) == 36  # 6 images x 6 texts


def test_an_unforeseen_failure_is_counted_by_where_it_happened():
    from data_pipeline.loader.stream import failure_site
    from data_pipeline.schema import checked_box

    with pytest.raises(TypeError) as info:
        checked_box((0.0, 0.0, "wide", 1.0), 10, 10)  # what parse_meta would have refused
    assert failure_site(info.value) == "schema.checked_box"
    assert failure_site(ValueError("raised outside the pipeline")) == "unknown"
