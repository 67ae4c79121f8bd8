"""The eval sets: a data spec in evaluation mode (`training: false`), one corpus per kind,
read through the training stream (one pass, stored order, no shuffle buffer, no
augmentation, every text of a sample; see data_pipeline/loader/stream.py).

Every rank reads the whole eval set, so a stream is always the one slot of one rank.
"""
from __future__ import annotations

from data_pipeline.io.shard_list import expand_shards
from data_pipeline.loader.corpus_loader import build_transform
from data_pipeline.loader.stream import CorpusStream
from data_pipeline.spec import CorpusSpec, DataSpec, parse_data_spec

# The corpus of each kind, named as its metrics are prefixed (image/txt_r1, region/..., video/...).
EVAL_CORPORA = {"image_text": "image", "region": "region", "video_text": "video"}
# Eval shards are local files read once: a failed read is retried once, without waiting.
_EVAL_LOADER = {"num_workers": 0, "shard_retries": 1, "retry_delay_s": 0}


def eval_data_spec(tokenizer: str, image_res: int, patch_size: int, image_shards=(), region_shards=(),
                   video_shards=(), batch_size: int = 32, video_frames: int | None = None,
                   max_tokens: int | None = None, max_words: int | None = None,
                   video_decode_timeout_s: float | None = None, sets=()) -> DataSpec:
    """A data spec in evaluation mode over the given shard patterns; `image_res` and
    `patch_size` must match the model; a setting left None takes the data spec's default.
    `sets`: further (name, kind, shard patterns), each a corpus of that name (its metrics'
    prefix). Invalid settings raise ConfigError naming the key."""
    named = [(EVAL_CORPORA[kind], kind, list(patterns)) for kind, patterns in
             (("image_text", image_shards), ("region", region_shards), ("video_text", video_shards))]
    corpora = []
    for name, kind, patterns in named + [(name, kind, list(patterns)) for name, kind, patterns in sets]:
        if patterns:
            corpus = {"name": name, "kind": kind, "shards": patterns, "batch_size": batch_size}
            if kind == "video_text":
                corpus["options"] = _given(frames=video_frames, decode_timeout_s=video_decode_timeout_s)
            corpora.append(corpus)
    return parse_data_spec({
        "training": False, "image_res": image_res, "patch_size": patch_size,
        "text": {"tokenizer": tokenizer, **_given(max_tokens=max_tokens, max_words=max_words)},
        "loader": dict(_EVAL_LOADER), "corpora": corpora})


def _given(**settings) -> dict:
    return {key: value for key, value in settings.items() if value is not None}


def eval_spec_like_training(data: DataSpec, image_shards=(), region_shards=(), video_shards=(),
                            batch_size: int = 32, sets=()) -> DataSpec:
    """Eval sets read as a training data spec reads its corpora: its tokenizer and text
    length, image resolution, patch size and the frame count and decode timeout of its first
    video corpus."""
    videos = data.corpora_of("video_text")
    video = {"video_frames": videos[0].options.frames,
             "video_decode_timeout_s": videos[0].options.decode_timeout_s} if videos else {}
    return eval_data_spec(data.text.tokenizer, data.image_res, data.patch_size, image_shards, region_shards,
                          video_shards, batch_size, max_tokens=data.text.max_tokens, max_words=data.text.max_words,
                          sets=sets, **video)


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
