"""Held-out shards for evaluation: read once, in stored order, without randomness.

Images are resized whole to res x res (no crop, no flip, no RandAugment) and CLIP-normalised
as in training; a video contributes the middle frame of each of its segments. Unlike the
training transforms, which draw one caption per sample, every caption of a sample becomes a
text whose positive is that sample, and every text of every region becomes a grounding query.

Batches:
- retrieval (image_text, video_text): ``images`` (B, 3, H, W) or ``frames`` (B, F, 3, H, W);
  ``text_ids``, ``text_mask`` (T, L); ``text_sample`` (T,) long, the batch position of each
  text's sample; ``keys`` (B,), ``texts`` (T,).
- region: ``images`` (B, 3, H, W); ``image_index`` (R,) long; ``text_ids``, ``text_mask``
  (R, L); ``boxes`` (R, 4) normalised (cx, cy, w, h) of the image; ``patch_mask``
  (R, 1 + P) bool; ``keys`` (B,), ``texts`` (R,).

Bad samples, captions and boxes are skipped and counted in ``EvalReader.counters``, as the
training stream does.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from .io.shard_list import expand_shards
from .io.shard_reader import read_shard
from .media.image_decode import crop_resize, normalise, open_image, to_uint8_tensor
from .media.video_decode import decode_clip
from .schema import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, checked_box, media_of, parse_meta
from .skips import BadSample, Counters
from .spec import DataSpec, TextSpec, VideoTextOptions
from .text import TextEncoder
from .transforms.geometry import normalised_cxcywh, patch_mask

log = logging.getLogger(__name__)

EVAL_KINDS = ("image_text", "region", "video_text")


@dataclass
class EvalDataSpec:
    """What to evaluate on. ``image_res`` and ``patch_size`` must match the model."""

    text: TextSpec
    image_res: int
    patch_size: int = 16
    image_shards: list[str] = field(default_factory=list)
    region_shards: list[str] = field(default_factory=list)
    video_shards: list[str] = field(default_factory=list)
    batch_size: int = 32  # samples (images or videos) per batch
    video_frames: int = VideoTextOptions.frames
    decode_timeout_s: float = VideoTextOptions.decode_timeout_s
    max_samples: int | None = None  # per kind, the first ones in shard order; None reads all

    def __post_init__(self):
        for name in ("image_res", "patch_size", "batch_size", "video_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"eval data: {name} must be a positive int, got {value!r}")
        if self.image_res % self.patch_size:
            raise ValueError(f"eval data: image_res {self.image_res} is not a multiple of patch_size {self.patch_size}")
        if self.max_samples is not None and (not isinstance(self.max_samples, int) or self.max_samples <= 0):
            raise ValueError(f"eval data: max_samples must be a positive int or None, got {self.max_samples!r}")

    @classmethod
    def like_training(cls, data: DataSpec, image_shards=(), region_shards=(), video_shards=(), **options
                      ) -> "EvalDataSpec":
        """Eval settings that match a training data spec: its tokenizer and text length, image
        resolution, patch size and video frame count (of its first video corpus)."""
        videos = data.corpora_of("video_text")
        if videos:
            options.setdefault("video_frames", videos[0].options.frames)
            options.setdefault("decode_timeout_s", videos[0].options.decode_timeout_s)
        return cls(text=data.text, image_res=data.image_res, patch_size=data.patch_size, image_shards=list(image_shards),
                   region_shards=list(region_shards), video_shards=list(video_shards), **options)

    def shards_of(self, kind: str) -> list[str]:
        return {"image_text": self.image_shards, "region": self.region_shards, "video_text": self.video_shards}[kind]


# Masking draws from an RNG; evaluation uses only text_ids / text_mask, but a fixed seed keeps
# even the unused fields reproducible.
_TEXT_RNG_SEED = "eval"


class EvalReader:
    """Reads one kind's eval shards in order and yields batches (see the module docstring)."""

    def __init__(self, kind: str, spec: EvalDataSpec, text: TextEncoder | None = None):
        if kind not in EVAL_KINDS:
            raise ValueError(f"eval data: unknown kind {kind!r} (allowed: {', '.join(EVAL_KINDS)})")
        patterns = spec.shards_of(kind)
        if not patterns:
            raise ValueError(f"eval data: no {kind} shards given")
        self.kind, self.spec = kind, spec
        self.urls = expand_shards(list(patterns), where=f"eval {kind} shards")
        self.text = text or TextEncoder(spec.text)
        self.counters = Counters()

    # Samples ------------------------------------------------------------------------------

    def _raw_samples(self) -> Iterator[dict]:
        for url in self.urls:
            for _, raw in read_shard(url, 0, self.counters, retries=1, retry_delay_s=0.0):
                yield raw

    def _encode_texts(self, texts: list[str]) -> list[tuple[str, dict]]:
        """(text, encoding) of every text that survives cleaning; the rest are counted."""
        encoded = []
        for text in texts:
            try:
                encoded.append((text, self.text.encode(text, random.Random(_TEXT_RNG_SEED))))
            except BadSample as bad:
                self.counters.add(bad.reason)
        return encoded

    def _resized(self, image: Image.Image) -> torch.Tensor:
        res = self.spec.image_res
        return to_uint8_tensor(crop_resize(image, (0, 0, image.width, image.height), (res, res)))

    def _image_text(self, raw: dict) -> dict:
        meta = parse_meta(raw)
        texts = self._encode_texts(meta.captions)
        if not texts:
            raise BadSample("no_caption")
        return {"media": self._resized(open_image(media_of(raw, IMAGE_EXTENSIONS))), "texts": texts, "key": meta.key}

    def _video_text(self, raw: dict) -> dict:
        meta = parse_meta(raw)
        texts = self._encode_texts(meta.captions)
        if not texts:
            raise BadSample("no_caption")
        start, end = meta.seconds("start"), meta.seconds("end")
        # training=False: the middle frame of each segment, no RNG involved.
        clip = decode_clip(media_of(raw, VIDEO_EXTENSIONS), self.spec.video_frames, start, end, False,
                           random.Random(0), self.spec.decode_timeout_s)
        res = self.spec.image_res
        frames = torch.stack([to_uint8_tensor(Image.fromarray(f).resize((res, res), Image.BICUBIC)) for f in clip])
        return {"media": frames, "texts": texts, "key": meta.key}

    def _region(self, raw: dict) -> dict:
        meta = parse_meta(raw)
        image = open_image(media_of(raw, IMAGE_EXTENSIONS))
        width, height = image.size
        res, patch = self.spec.image_res, self.spec.patch_size
        texts, boxes, masks = [], [], []
        for region in meta.regions:
            try:
                x, y, w, h = checked_box(region.box, width, height)
            except BadSample as bad:
                self.counters.add(bad.reason)
                continue
            # The whole image is resized to res x res, so a box scales by res / width, res / height.
            placed = (x * res / width, y * res / height, w * res / width, h * res / height)
            for text, encoding in self._encode_texts(region.texts):
                texts.append((text, encoding))
                boxes.append(normalised_cxcywh(*placed, res))
                masks.append(patch_mask(*placed, res, patch))
        if not texts:
            raise BadSample("no_region")
        return {"media": self._resized(image), "texts": texts, "boxes": np.array(boxes, dtype=np.float32),
                "patch_mask": np.stack(masks), "key": meta.key}

    def samples(self) -> Iterator[dict]:
        """Prepared samples in shard order, at most ``spec.max_samples``."""
        prepare = {"image_text": self._image_text, "region": self._region, "video_text": self._video_text}[self.kind]
        produced = 0
        for raw in self._raw_samples():
            if self.spec.max_samples is not None and produced >= self.spec.max_samples:
                return
            try:
                sample = prepare(raw)
            except BadSample as bad:
                self.counters.add(bad.reason)
                log.debug("eval %s: skipped %s: %s", self.kind, raw.get("__key__", ""), bad)
                continue
            produced += 1
            yield sample

    # Batches ------------------------------------------------------------------------------

    def batches(self) -> Iterator[dict]:
        pending = []
        for sample in self.samples():
            pending.append(sample)
            if len(pending) == self.spec.batch_size:
                yield self._collate(pending)
                pending = []
        if pending:
            yield self._collate(pending)

    def _collate(self, samples: list[dict]) -> dict:
        counts = torch.tensor([len(s["texts"]) for s in samples])
        owner = torch.repeat_interleave(torch.arange(len(samples)), counts)
        encodings = [encoding for s in samples for _, encoding in s["texts"]]
        batch = {
            "text_ids": torch.from_numpy(np.stack([e["text_ids"] for e in encodings])),
            "text_mask": torch.from_numpy(np.stack([e["text_mask"] for e in encodings])),
            "texts": [text for s in samples for text, _ in s["texts"]],
            "keys": [s["key"] for s in samples],
        }
        media = normalise(torch.stack([s["media"] for s in samples]))
        if self.kind == "video_text":
            batch.update(frames=media, text_sample=owner)
        elif self.kind == "image_text":
            batch.update(images=media, text_sample=owner)
        else:
            batch.update(images=media, image_index=owner,
                         boxes=torch.from_numpy(np.concatenate([s["boxes"] for s in samples])),
                         patch_mask=torch.from_numpy(np.concatenate([s["patch_mask"] for s in samples])))
        return batch
