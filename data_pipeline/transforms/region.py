"""Region samples as X²-VLM pre-trains on them.

One region is picked; a random crop that contains it is taken (at least `crop_min_side` of the
image's width and height), flipped (text-aware), resized to res x res and colour-augmented. The texts are the whole-image caption (as a
full-image box) and the regions that lie more than `min_perc_in_image` inside the crop,
clipped to it, up to `max_regions` texts. The picked region comes first among the
regions (X²-VLM shuffles it in with the others and may drop it).

In evaluation mode (grounding): the whole image resized to res x res, and every text of every
region with its box scaled to it; no whole-image caption (see evaluation.py).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..config import setting
from ..media.image_decode import crop_resize, open_image, to_uint8_pixels
from ..schema import IMAGE_EXTENSIONS, SampleMeta, checked_box, media_of
from ..skips import BadSample
from ..text import TextEncoder
from .base import SampleTransform
from .evaluation import counting_dropped, encode_every, stacked, whole_image
from .flip import FLIP_MODES, decide_flip, flipped_texts
from .geometry import normalised_cxcywh, patch_mask
from .randaugment import COLOUR_OPS, apply_plan, sample_plan


@dataclass
class RegionOptions:
    """`options` of a region corpus."""
    # Texts per image: the caption and the regions kept inside the crop.
    max_regions: int = setting(6, min=1)
    # A region is kept when more than this fraction of its area lies inside the crop.
    min_perc_in_image: float = setting(0.5, min=0, max=1)
    # The crop keeps at least this fraction of the image's width and of its height. 0 is X²-VLM's
    # crop: any crop that contains the picked region, which can zoom a small region to the whole
    # input and move it; texts that say how large a region is or where it lies ("the small ...
    # at the top left") describe the uncropped image and become false. 1 keeps the whole image.
    crop_min_side: float = setting(0.0, min=0, max=1)
    flip: str = setting("swap", choices=FLIP_MODES)
    rand_augment: bool = True


def crop_containing(box, width: int, height: int, rng: random.Random,
                    min_side: float = 0.0) -> tuple[int, int, int, int]:
    """A random crop (x, y, w, h) of the image that contains `box` entirely and keeps at least
    `min_side` of the image's width and of its height."""
    x, y, w, h = box
    least_w, least_h = math.ceil(min_side * width), math.ceil(min_side * height)
    x0 = rng.randint(0, min(math.floor(x), width - least_w))
    y0 = rng.randint(0, min(math.floor(y), height - least_h))
    x1 = rng.randint(max(min(math.ceil(x + w), width), x0 + least_w), width)
    y1 = rng.randint(max(min(math.ceil(y + h), height), y0 + least_h), height)
    return x0, y0, x1 - x0, y1 - y0


def box_in_output(box, crop, flip: bool, res: int, min_inside: float):
    """The part of `box` inside `crop` in output pixels (after flip and resize), or None
    when no more than `min_inside` of the box's area lies inside the crop."""
    x, y, w, h = box
    cx, cy, cw, ch = crop
    ix0, iy0 = max(cx, x), max(cy, y)
    ix1, iy1 = min(cx + cw, x + w), min(cy + ch, y + h)
    if ix1 <= ix0 or iy1 <= iy0 or (ix1 - ix0) * (iy1 - iy0) / (w * h) <= min_inside:
        return None
    bx, by, bw, bh = ix0 - cx, iy0 - cy, ix1 - ix0, iy1 - iy0
    if flip:
        bx = cw - bx - bw
    sx, sy = res / cw, res / ch
    return bx * sx, by * sy, bw * sx, bh * sy


class RegionTransform(SampleTransform):
    options: RegionOptions

    def __init__(self, res: int, patch_size: int, options: RegionOptions, text: TextEncoder, training: bool = True):
        super().__init__(res, options, text, training)
        self.patch_size = patch_size

    @classmethod
    def for_spec(cls, spec, options: RegionOptions, text: TextEncoder) -> RegionTransform:
        return cls(spec.image_res, spec.patch_size, options, text, spec.training)

    def _training(self, sample: dict, meta: SampleMeta, rng: random.Random) -> dict:
        image = open_image(media_of(sample, IMAGE_EXTENSIONS))
        width, height = image.size
        regions, dropped = [], list(meta.dropped)
        for region in meta.regions:  # a box outside the image costs only its region
            try:
                regions.append((checked_box(region.box, width, height), region.texts))
            except BadSample as bad:
                dropped.append(bad.reason)
        if not regions:
            raise BadSample("no_region", dropped=dropped)
        target = rng.randrange(len(regions))
        crop = crop_containing(regions[target][0], width, height, rng, self.options.crop_min_side)
        mode = self.options.flip
        all_texts = meta.captions + [t for _, texts in regions for t in texts]
        flip = decide_flip(rng, all_texts, mode)

        out = crop_resize(image, crop, (self.res, self.res))
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        if self.options.rand_augment:
            out = apply_plan(out, sample_plan(rng, COLOUR_OPS))

        texts, boxes, masks = [], [], []
        n_patches = (self.res // self.patch_size) ** 2
        if meta.captions:
            texts.append(meta.captions[rng.randrange(len(meta.captions))])
            boxes.append([0.5, 0.5, 1.0, 1.0])
            masks.append(np.ones(1 + n_patches, dtype=bool))
        others = [i for i in range(len(regions)) if i != target]
        rng.shuffle(others)
        for i in [target] + others:
            if len(texts) >= self.options.max_regions:
                break
            placed = box_in_output(regions[i][0], crop, flip, self.res, self.options.min_perc_in_image)
            if placed is None:
                continue
            region_texts = regions[i][1]
            texts.append(region_texts[rng.randrange(len(region_texts))])
            boxes.append(normalised_cxcywh(*placed, self.res))
            masks.append(patch_mask(*placed, self.res, self.patch_size))
        texts = flipped_texts(texts, flip, mode)
        encoded = [self.text.encode(t, rng) for t in texts]
        return {
            "image": to_uint8_pixels(out),
            **{name: np.stack([e[name] for e in encoded]) for name in encoded[0]},
            "boxes": np.array(boxes, dtype=np.float32),
            "patch_mask": np.stack(masks),
            "key": meta.key,
            # What was drawn, for logs and checks; not batched.
            "crop": crop,
            "flipped": flip,
            "skipped": dropped,
            "texts": texts,
        }

    def _evaluation(self, sample: dict, meta: SampleMeta, rng: random.Random) -> dict:
        image = open_image(media_of(sample, IMAGE_EXTENSIONS))
        width, height = image.size
        res = self.res
        texts, encodings, boxes, masks, dropped = [], [], [], [], list(meta.dropped)
        for region in meta.regions:
            try:
                x, y, w, h = checked_box(region.box, width, height)
            except BadSample as bad:
                dropped.append(bad.reason)
                continue
            # The whole image becomes res x res: a box scales by res / width and res / height.
            placed = (x * res / width, y * res / height, w * res / width, h * res / height)
            kept, encoded, lost = encode_every(self.text, region.texts, rng)
            dropped += lost
            texts += kept
            encodings += encoded
            boxes += [normalised_cxcywh(*placed, res)] * len(kept)
            masks += [patch_mask(*placed, res, self.patch_size)] * len(kept)
        if not texts:
            raise BadSample("no_region", dropped=dropped)
        with counting_dropped(dropped):
            out = whole_image(image, res)
        return {"image": to_uint8_pixels(out), **stacked(encodings), "boxes": np.array(boxes, dtype=np.float32),
                "patch_mask": np.stack(masks), "texts": texts, "key": meta.key, "skipped": dropped}
