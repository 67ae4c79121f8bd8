"""From annotation files to the ordered list of samples and their split into shards.

Samples come in order of first appearance, inputs in command-line order; every record of
the same media path merges into one sample (captions, then regions, in that order). The
plan is a pure function of the annotation files and options, which is what makes shards
identical for any number of workers and after a resume.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from .keys import sample_key
from .readers import READERS
from .records import Record, Rejection, Sample


@dataclass
class AnnotationInput:
    format: str
    path: Path


def plan_samples(inputs: list[AnnotationInput], prefix: str, refcoco_splits: tuple[str, ...] = ()
                 ) -> tuple[list[Sample], list[Rejection], list[dict]]:
    """(samples, rejected records, per-input counts). Raises `AnnotationError` for a file
    that is not of its format."""
    samples: dict[str, Sample] = {}
    media_of_key: dict[str, str] = {}
    rejected: list[Rejection] = []
    counts = []
    for source in inputs:
        records = rejections = 0
        for item in READERS[source.format](source.path, splits=refcoco_splits):
            if isinstance(item, Rejection):
                rejected.append(item)
                rejections += 1
                continue
            records += 1
            media = posixpath.normpath(item.media)
            key = sample_key(prefix, media)
            if media_of_key.setdefault(key, media) != media:
                rejected.append(Rejection(f"duplicate key {key}: {media_of_key[key]!r} and {media!r} map to the same key",
                                          "record", item.origin, key, media))
                rejections += 1
                continue
            _merge(samples, key, media, item)
        counts.append({"format": source.format, "path": str(source.path), "records": records, "rejected": rejections})
    return list(samples.values()), rejected, counts


def _merge(samples: dict[str, Sample], key: str, media: str, record: Record) -> None:
    sample = samples.get(key)
    if sample is None:
        samples[key] = Sample(key, media, record.kind, [record.origin], list(record.captions), list(record.regions),
                              record.size, record.start, record.end)
        return
    sample.origins.append(record.origin)
    sample.captions.extend(record.captions)
    sample.regions.extend(record.regions)
    sample.size = sample.size or record.size
    if sample.start is None and sample.end is None:
        sample.start, sample.end = record.start, record.end


def split_into_shards(samples: list[Sample], samples_per_shard: int) -> list[list[Sample]]:
    return [samples[i:i + samples_per_shard] for i in range(0, len(samples), samples_per_shard)]
