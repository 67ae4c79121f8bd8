"""The libjpeg-turbo region decoder against Pillow's whole-image decode."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from data_pipeline.media import image_decode
from data_pipeline.media.image_decode import crop_resize, draft_scale, open_image, to_uint8_pixels
from data_pipeline.skips import BadSample

WIDTH, HEIGHT = 1037, 771  # not multiples of the 16-pixel blocks


def photo_like() -> Image.Image:
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 255, (97, 131, 3), dtype=np.uint8)).resize((WIDTH, HEIGHT), Image.BICUBIC)
    grain = np.asarray(smooth, dtype=np.int16) + rng.normal(0, 20, (HEIGHT, WIDTH, 3)).astype(np.int16)
    return Image.fromarray(grain.clip(0, 255).astype(np.uint8))


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def variants() -> dict[str, bytes]:
    image = photo_like()
    return {"4:2:0": jpeg(image, quality=90), "4:4:4": jpeg(image, quality=90, subsampling=0),
            "4:2:2": jpeg(image, quality=85, subsampling=1), "progressive": jpeg(image, quality=80, progressive=True),
            "grey": jpeg(image.convert("L"), quality=90)}


def pillow_decode(data: bytes, scale: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    if scale > 1:
        image.draft("RGB", (WIDTH // scale, HEIGHT // scale))
        assert image.decoderconfig[0] == scale
    return np.asarray(image.convert("RGB"))


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """(H, W, 3) pixels as the loader batches them (the region path gives RGBX images),
    checked against Pillow's own conversion to RGB."""
    pixels = to_uint8_pixels(image)
    assert np.array_equal(pixels, np.asarray(image.convert("RGB")))
    return pixels


def random_box(rng: random.Random) -> tuple[int, int, int, int]:
    w, h = rng.randrange(1, WIDTH + 1), rng.randrange(1, HEIGHT + 1)
    return rng.randrange(0, WIDTH - w + 1), rng.randrange(0, HEIGHT - h + 1), w, h


def test_the_region_decoder_is_built():
    # setup.py builds it wherever libjpeg's headers are (system-packages.txt); without it
    # the loader is correct but slower, which CI should not hide.
    assert image_decode._jpeg_region is not None


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_decoded_region_is_exactly_the_whole_image_decode_there(variants, scale):
    rng = random.Random(scale)
    for name, data in variants.items():
        whole = pillow_decode(data, scale)
        boxes = [random_box(rng) for _ in range(12)] + [(0, 0, WIDTH, HEIGHT), (WIDTH - 1, HEIGHT - 1, 1, 1),
                                                         (0, HEIGHT - 40, 30, 40), (500, 0, 16, 16)]
        for left, top, w, h in boxes:
            pixels, x, y, ow, oh = image_decode._jpeg_region.decode_region(data, left, top, w, h, scale)
            window = np.frombuffer(pixels, np.uint8).reshape(oh, ow, 4)
            assert (window[..., 3] == 255).all()
            window = window[..., :3]
            # the asked-for rectangle, in scaled pixels, lies inside the window ...
            x0, y0 = left // scale, top // scale
            x1, y1 = min(whole.shape[1], -(-(left + w) // scale)), min(whole.shape[0], -(-(top + h) // scale))
            assert x <= x0 and y <= y0 and x + ow >= x1 and y + oh >= y1
            # ... with exactly the pixels of the whole-image decode
            assert np.array_equal(window[y0 - y:y1 - y, x0 - x:x1 - x], whole[y0:y1, x0:x1]), \
                (name, scale, (left, top, w, h))
            # and stops well short of the bottom when the box does
            if top + h + 64 * scale < HEIGHT:
                assert y + oh < whole.shape[0]


def test_crop_resize_matches_the_pillow_path(variants):
    # Same decoded pixels; the bicubic resampling sees the box at an integer offset, whose
    # floating-point rounding can move a value by a level or two.
    rng = random.Random(0)
    scales = set()
    for name, data in variants.items():
        for _ in range(25):
            x, y, w, h = (rng.uniform(0, WIDTH / 2), rng.uniform(0, HEIGHT / 2), rng.uniform(4, WIDTH / 2),
                          rng.uniform(4, HEIGHT / 2))
            size = rng.choice([(224, 224), (64, 64), (32, 48), (16, 16)])
            scales.add(draft_scale((WIDTH, HEIGHT), (w, h), size))
            fast = rgb_pixels(crop_resize(open_image(data), (x, y, w, h), size)).astype(np.int16)
            plain = rgb_pixels(crop_resize(open_image(data), (x, y, w, h), size, region_decode=False)).astype(np.int16)
            assert fast.shape == plain.shape == (size[1], size[0], 3)
            difference = np.abs(fast - plain)
            assert difference.max() <= 2 and difference.mean() < 0.05, (name, (x, y, w, h), size)
    assert scales == {1, 2, 4, 8}


def test_draft_scale_is_pillows_choice():
    for size, crop, expected in [((640, 480), (640, 480), 2), ((640, 480), (400, 300), 1), ((1280, 960), (1280, 960), 4),
                                 ((4000, 3000), (4000, 3000), 8), ((4000, 3000), (1000, 1000), 4), ((300, 300), (300, 300), 1)]:
        assert draft_scale(size, crop, (224, 224)) == expected


def test_cmyk_jpeg_takes_pillows_path():
    data = jpeg(photo_like().convert("CMYK"))
    box = (100.5, 50.25, 600.0, 500.0)
    fast = rgb_pixels(crop_resize(open_image(data), box, (64, 64)))
    plain = rgb_pixels(crop_resize(open_image(data), box, (64, 64), region_decode=False))
    assert np.array_equal(fast, plain)


def test_broken_jpegs_fail_or_pass_as_with_pillow(variants):
    data = variants["4:2:0"]
    cut = data[: len(data) // 2]  # ends in the middle of the image
    for region_decode in (True, False):
        with pytest.raises(BadSample) as caught:
            crop_resize(open_image(cut), (0, 0, WIDTH, HEIGHT), (224, 224), region_decode=region_decode)
        assert caught.value.reason == "image_decode"
    # Zeroed entropy-coded data is a corrupt-data warning to libjpeg and Pillow both: the
    # image decodes, to garbage, as it would have without the region decoder.
    zeroed = data[:1000] + bytes(len(data) - 1000)
    outputs = [rgb_pixels(crop_resize(open_image(zeroed), (10, 10, 500, 400), (64, 64), region_decode=region_decode)
                          ).astype(np.int16) for region_decode in (True, False)]
    assert np.abs(outputs[0] - outputs[1]).max() <= 2
    with pytest.raises(ValueError, match="scale denominator"):
        image_decode._jpeg_region.decode_region(data, 0, 0, 10, 10, 3)


def test_jpeg_frame_header_gives_pillows_size_and_bands(variants):
    image = photo_like()
    exif = Image.Exif()
    exif[0x010E] = "a description long enough to matter " * 20  # an APP1 segment before the frame
    cases = dict(variants, cmyk=jpeg(image.convert("CMYK")), exif=jpeg(image, exif=exif.tobytes()),
                 small=jpeg(image.resize((17, 5))))
    for name, data in cases.items():
        opened, reference = open_image(data), Image.open(io.BytesIO(data))
        assert opened.size == reference.size and opened.format == "JPEG", name
        assert opened.components == len(reference.getbands()), name
    data = variants["4:2:0"]
    for broken in (data[:2] + b"\x00" * 50, data[:100]):  # no marker; cut before the frame header
        with pytest.raises(BadSample) as caught:
            open_image(broken)
        assert caught.value.reason == "image_decode"
