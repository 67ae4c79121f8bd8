"""What every per-sample transform shares: a raw shard sample and its RNG in, the model's
inputs for that sample out; training draws its augmentation from the RNG, evaluation
(`training=False`, see evaluation.py) reads the whole sample and draws nothing."""
from __future__ import annotations

import random
from abc import ABC, abstractmethod

from ..schema import SampleMeta, parse_meta
from ..skips import BadSample
from ..text import TextEncoder


class SampleTransform(ABC):
    def __init__(self, res: int, options, text: TextEncoder, training: bool = True):
        self.res = res
        self.options = options
        self.text = text
        self.training = training

    @classmethod
    def for_spec(cls, spec, options, text: TextEncoder) -> SampleTransform:
        """The transform of a corpus with OPTIONS read under the data SPEC (its resolution and
        mode), as a data kind's record makes it (data_pipeline/kinds)."""
        return cls(spec.image_res, options, text, spec.training)

    def __call__(self, sample: dict, rng: random.Random) -> dict:
        meta = parse_meta(sample)
        if self.training:
            return self._training(sample, meta, rng)
        return self._evaluation(sample, meta, rng)

    @abstractmethod
    def _training(self, sample: dict, meta: SampleMeta, rng: random.Random) -> dict:
        """One augmented view of the sample and one drawn text (or a set of region texts)."""

    @abstractmethod
    def _evaluation(self, sample: dict, meta: SampleMeta, rng: random.Random) -> dict:
        """The whole sample, every text of it."""


def drawn_caption(meta: SampleMeta, rng: random.Random) -> str:
    """One of the sample's captions, drawn from its RNG."""
    if not meta.captions:
        raise BadSample("no_caption")
    return meta.captions[rng.randrange(len(meta.captions))]
