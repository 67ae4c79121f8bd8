"""Image-text samples as X²-VLM pre-trains on them: RandomResizedCrop(res, scale 0.2-1,
bicubic), text-aware horizontal flip, RandAugment(2, 7) -> uint8 pixels (the vision tower
normalises them); one caption drawn from the sample's captions, cleaned, tokenised and masked.

In evaluation mode: the whole image resized, and every caption (see evaluation.py)."""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from ..config import setting
from ..media.image_decode import crop_resize, open_image, to_uint8_pixels
from ..schema import IMAGE_EXTENSIONS, SampleMeta, media_of
from ..skips import BadSample
from .base import SampleTransform, drawn_caption
from .evaluation import counting_dropped, encode_every, stacked, whole_image
from .flip import FLIP_MODES, decide_flip, flipped_texts
from .geometry import check_crop_scale, random_resized_crop_box
from .randaugment import FULL_OPS, apply_plan, sample_plan


@dataclass
class ImageTextOptions:
    """`options` of an image_text corpus."""
    # RandomResizedCrop's range of crop area, as a fraction of the image.
    crop_scale: list[float] = setting([0.2, 1.0], length=2, gt=0, max=1)
    flip: str = setting("swap", choices=FLIP_MODES)
    rand_augment: bool = True

    def check(self, where: str) -> None:
        check_crop_scale(self.crop_scale, where)


class ImageTextTransform(SampleTransform):
    options: ImageTextOptions

    def _training(self, sample: dict, meta: SampleMeta, rng: random.Random) -> dict:
        caption = drawn_caption(meta, rng)
        image = open_image(media_of(sample, IMAGE_EXTENSIONS))
        size = (self.res, self.res)
        box = random_resized_crop_box(image.width, image.height, tuple(self.options.crop_scale), rng)
        flip = decide_flip(rng, [caption], self.options.flip)
        out = crop_resize(image, box, size)
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
            caption = flipped_texts([caption], flip, self.options.flip)[0]
        if self.options.rand_augment:
            out = apply_plan(out, sample_plan(rng, FULL_OPS))
        return {"image": to_uint8_pixels(out), **self.text.encode(caption, rng), "key": meta.key, "flipped": flip}

    def _evaluation(self, sample: dict, meta: SampleMeta, rng: random.Random) -> dict:
        texts, encodings, dropped = encode_every(self.text, meta.captions, rng)
        if not texts:
            raise BadSample("no_caption", dropped=dropped)
        with counting_dropped(dropped):
            out = whole_image(open_image(media_of(sample, IMAGE_EXTENSIONS)), self.res)
        return {"image": to_uint8_pixels(out), **stacked(encodings), "texts": texts, "key": meta.key,
                "skipped": dropped}
