"""What the transforms share in evaluation mode (the data spec's `training: false`).

Evaluation draws nothing: the whole image is resized to res x res (no crop, flip or
RandAugment), and every text of a sample is kept (every caption, every text of every
region), each a query whose positive is that sample. A text or box that cannot be used is
dropped and its reason counted; the sample stays as long as one text does.
"""
from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
from PIL import Image

from ..media.image_decode import EncodedImage, crop_resize
from ..skips import BadSample
from ..text import TextEncoder


def encode_every(text: TextEncoder, texts: list[str], rng: random.Random
                 ) -> tuple[list[str], list[dict[str, np.ndarray]], list[str]]:
    """(the texts that encode, their encodings, the reasons of the others)."""
    kept, encodings, dropped = [], [], []
    for caption in texts:
        try:
            encodings.append(text.encode(caption, rng))
        except BadSample as bad:
            dropped.append(bad.reason)
            continue
        kept.append(caption)
    return kept, encodings, dropped


def stacked(encodings: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-text encodings -> one (T, L) array per field."""
    return {name: np.stack([e[name] for e in encodings]) for name in encodings[0]}


@contextmanager
def counting_dropped(dropped: list[str]):
    """A sample given up inside this block still counts the parts dropped before."""
    try:
        yield
    except BadSample as bad:
        bad.dropped = tuple(dropped) + bad.dropped
        raise


def whole_image(image: EncodedImage, res: int) -> Image.Image:
    return crop_resize(image, (0, 0, image.width, image.height), (res, res))
