"""Builds one shard from its planned samples: the unit of work of a worker and of a resume."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .build_state import BuildState
from .records import Sample
from .sample_encoder import EncodeOptions, encode_sample
from .tar_writer import ShardWriter


@dataclass
class ShardTask:
    name: str
    samples: list[Sample]


def build_shard(task: ShardTask, options: EncodeOptions, state: BuildState, progress: Callable[[int], None]) -> dict:
    """Writes the shard and its record; returns the record (counts, bytes, sha256, rejections)."""
    writer = ShardWriter(state.output / task.name)
    rejected = []
    samples = captions = regions = 0
    try:
        for sample in task.samples:
            encoded = encode_sample(sample, options, rejected)
            if encoded is not None:
                writer.add(sample.key, encoded.members)
                samples += 1
                captions += encoded.captions
                regions += encoded.regions
            progress(1)
        size, sha256 = writer.finish()
    except BaseException:
        writer.abort()
        raise
    record = {"name": task.name, "samples": samples, "captions": captions, "regions": regions,
              "bytes": size, "sha256": sha256, "rejected": [r.to_json() for r in rejected]}
    state.save(record)
    writer.commit()
    return record
