"""Captioning on held-out image-text shards: a caption of each image from the causal decoder
(training/model/generation.py), scored against the image's own texts with BLEU-4 and CIDEr-D
(caption_metrics.py). The ids that start, end and pad a text come from the data spec's
tokenizer, through the loader's own text encoder."""
from __future__ import annotations

import collections
import dataclasses

import torch

from data_pipeline.loader.stream import CorpusStream
from data_pipeline.text import TextEncoder
from training.evaluation.caption_metrics import caption_metrics
from training.evaluation.eval_sets import EmptyEvalSet, eval_batches
from training.model.generation import generate, special_ids


@dataclasses.dataclass(frozen=True)
class CaptioningSettings:
    max_len: int = 30  # most generated tokens per caption
    beam: int = 1  # 1: greedy


@torch.no_grad()
def generate_eval_captions(model, stream: CorpusStream, settings: CaptioningSettings
                           ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(caption of each image, its reference texts), keyed by sample key."""
    device = next(model.parameters()).device
    text = TextEncoder(stream.spec.text)
    special = special_ids(text)
    candidates, references = {}, {}
    for batch in eval_batches(stream):
        vision = model.encode_image(batch["images"].to(device))
        ids = generate(model, vision, max_len=settings.max_len, beam=settings.beam, **special)
        owners = batch["text_sample"].tolist()
        for i, key in enumerate(batch["keys"]):
            candidates[key] = text.tokenizer.decode(ids[i], skip_special_tokens=True).strip()
            references[key] = [t for t, owner in zip(batch["texts"], owners) if owner == i]
    if not candidates:
        raise EmptyEvalSet(f"eval image shards {stream.urls[:3]}...: no usable sample (skipped: {stream.counters.as_dict()})")
    return candidates, references


def constant_caption(references: dict[str, list[str]]) -> str:
    """The set's most frequent reference text (the first of them on a tie, in the set's order)."""
    texts = [text for key in references for text in references[key]]
    return collections.Counter(texts).most_common(1)[0][0]


def evaluate_captioning(model, stream: CorpusStream, settings: CaptioningSettings) -> dict[str, float]:
    """``bleu4``, ``cider`` (CIDEr-D) and ``captioned`` (images) of one eval set, and the
    constant-caption baseline: the same scores of the set's most frequent reference text given to
    every image (``constant_bleu4``, ``constant_cider``)."""
    candidates, references = generate_eval_captions(model, stream, settings)
    constant = constant_caption(references)
    baseline = caption_metrics({key: constant for key in references}, references)
    return {**caption_metrics(candidates, references), "captioned": len(candidates),
            **{f"constant_{name}": value for name, value in baseline.items()}}
