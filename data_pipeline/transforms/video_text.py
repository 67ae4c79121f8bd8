"""Video-text samples: `frames` frames by segment sampling, one random crop, flip and
RandAugment plan shared by every frame of the clip -> uint8 (F, H, W, 3) pixels (the collate
makes (B, F, 3, H, W) of them; the vision tower normalises).

In evaluation mode: the middle frame of each segment, each resized whole, and every caption
(see evaluation.py)."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..config import setting
from ..media.image_decode import to_uint8_pixels
from ..media.video_decode import decode_clip
from ..schema import VIDEO_EXTENSIONS, SampleMeta, media_of
from ..skips import BadSample
from .base import SampleTransform, drawn_caption
from .evaluation import counting_dropped, encode_every, stacked
from .flip import FLIP_MODES, decide_flip, flipped_texts
from .geometry import check_crop_scale, random_resized_crop_box
from .randaugment import FULL_OPS, apply_plan, sample_plan


@dataclass
class VideoTextOptions:
    """`options` of a video_text corpus."""
    frames: int = setting(3, min=1)
    crop_scale: list[float] = setting([0.5, 1.0], length=2, gt=0, max=1)
    flip: str = setting("swap", choices=FLIP_MODES)
    rand_augment: bool = True
    decode_timeout_s: float = setting(10.0, gt=0, max=3600)

    def check(self, where: str) -> None:
        check_crop_scale(self.crop_scale, where)


class VideoTextTransform(SampleTransform):
    options: VideoTextOptions

    def _training(self, sample: dict, meta: SampleMeta, rng: random.Random) -> dict:
        caption = drawn_caption(meta, rng)
        data = media_of(sample, VIDEO_EXTENSIONS)
        clip = decode_clip(data, self.options.frames, meta.seconds("start"), meta.seconds("end"),
                           True, rng, self.options.decode_timeout_s)
        height, width = clip.shape[1:3]
        size = (self.res, self.res)
        x, y, w, h = random_resized_crop_box(width, height, tuple(self.options.crop_scale), rng)
        flip = decide_flip(rng, [caption], self.options.flip)
        caption = flipped_texts([caption], flip, self.options.flip)[0]
        plan = sample_plan(rng, FULL_OPS) if self.options.rand_augment else []
        frames = []
        for array in clip:
            frame = Image.fromarray(array).resize(size, Image.BICUBIC, box=(x, y, x + w, y + h))
            if flip:
                frame = frame.transpose(Image.FLIP_LEFT_RIGHT)
            frames.append(to_uint8_pixels(apply_plan(frame, plan)))
        return {"frames": np.stack(frames), **self.text.encode(caption, rng), "key": meta.key, "flipped": flip}

    def _evaluation(self, sample: dict, meta: SampleMeta, rng: random.Random) -> dict:
        texts, encodings, dropped = encode_every(self.text, meta.captions, rng)
        if not texts:
            raise BadSample("no_caption", dropped=dropped)
        with counting_dropped(dropped):
            # training=False: the middle frame of each segment
            clip = decode_clip(media_of(sample, VIDEO_EXTENSIONS), self.options.frames, meta.seconds("start"),
                               meta.seconds("end"), False, rng, self.options.decode_timeout_s)
        size = (self.res, self.res)
        frames = np.stack([to_uint8_pixels(Image.fromarray(array).resize(size, Image.BICUBIC)) for array in clip])
        return {"frames": frames, **stacked(encodings), "texts": texts, "key": meta.key, "skipped": dropped}
