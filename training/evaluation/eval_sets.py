"""The eval sets: a data spec in evaluation mode (`training: false`), one corpus per held-out
set, read through the training stream (one pass, stored order, no shuffle buffer, no
augmentation, every text of a sample; see data_pipeline/loader/stream.py).

Every rank reads the whole eval set, so a stream is always the one slot of one rank.
"""
from __future__ import annotations

import dataclasses

from data_pipeline.io.shard_list import expand_shards
from data_pipeline.loader.corpus_loader import build_transform
from data_pipeline.loader.stream import CorpusStream
from data_pipeline.spec import CorpusSpec, DataSpec, parse_data_spec

# Eval shards are local files read once: a failed read is retried once, without waiting.
_EVAL_LOADER = {"num_workers": 0, "shard_retries": 1, "retry_delay_s": 0}


class EmptyEvalSet(ValueError):
    """A held-out set gave no usable sample (its shards unreadable, timed out or all bad)."""


def eval_data_spec(tokenizer: str, image_res: int, patch_size: int, sets, batch_size: int = 32,
                   max_tokens: int | None = None, max_words: int | None = None,
                   options: dict[str, dict] | None = None, shard_read_timeout_s: float | None = None) -> DataSpec:
    """A data spec in evaluation mode: SETS (name, data kind, shard patterns) each a corpus of
    that name (its metrics' prefix; a set without patterns is left out); `image_res` and
    `patch_size` must match the model; OPTIONS (data kind -> corpus options, e.g.
    {"video_text": {"frames": 4}}) for the corpora of a kind; a setting left None takes the data
    spec's default (SHARD_READ_TIMEOUT_S: the loader's bound on reading a shard). Invalid
    settings raise ConfigError naming the key."""
    options = options or {}
    corpora = []
    for name, kind, patterns in sets:
        if patterns:
            corpus = {"name": name, "kind": kind, "shards": list(patterns), "batch_size": batch_size}
            if options.get(kind):
                corpus["options"] = dict(options[kind])
            corpora.append(corpus)
    return parse_data_spec({
        "training": False, "image_res": image_res, "patch_size": patch_size,
        "text": {"tokenizer": tokenizer, **_given(max_tokens=max_tokens, max_words=max_words)},
        "loader": {**_EVAL_LOADER, **_given(shard_read_timeout_s=shard_read_timeout_s)}, "corpora": corpora})


def _given(**settings) -> dict:
    return {key: value for key, value in settings.items() if value is not None}


def eval_spec_like_training(data: DataSpec, sets, batch_size: int = 32) -> DataSpec:
    """Eval sets (name, data kind, shard patterns) read as a training data spec reads its
    corpora: its tokenizer and text length, image resolution and patch size, and for each kind
    the options of its first training corpus of that kind (those evaluation reads: the frames
    and decode timeout of a video corpus; augmentation settings play no part in evaluation), and
    its bound on reading a shard (evaluation reads in the trainer's process: nothing else bounds it)."""
    options = {}
    for corpus in data.corpora:
        options.setdefault(corpus.kind, dataclasses.asdict(corpus.options))
    return eval_data_spec(data.text.tokenizer, data.image_res, data.patch_size, sets, batch_size,
                          max_tokens=data.text.max_tokens, max_words=data.text.max_words, options=options,
                          shard_read_timeout_s=data.loader.shard_read_timeout_s)


def eval_stream(spec: DataSpec, corpus: CorpusSpec, max_samples: int | None = None) -> CorpusStream:
    """One pass over `corpus`'s shards; at most `max_samples` samples, the first in stored order."""
    if spec.training:
        raise ValueError("evaluation reads a data spec in evaluation mode (training: false)")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples <= 0):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
    urls = expand_shards(corpus.shards, where=f"eval {corpus.kind} shards")
    return CorpusStream(corpus, urls, spec, 0, 1, 0, 1, build_transform(corpus, spec), max_samples=max_samples)


def eval_batches(stream: CorpusStream):
    for batch, _ in stream.batches_with_state():
        yield batch
