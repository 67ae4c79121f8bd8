"""Zero-shot evaluation of an X²-VLM model on held-out shards, as X²-VLM evaluates:

- retrieval (image-text and video-text): ITC similarity of every text with every image over
  the whole eval set; then, per query and direction, the top ``itm_top_k`` candidates are
  re-scored by the ITM head and ranked first, in ITM order (``itm_top_k=0``: ITC only);
- grounding (region shards): the box head's prediction for each region text against the true
  box, IoU >= 0.5, beside the centre-box baseline (see ``grounding``).

The eval sets are a data spec in evaluation mode (see ``training/evaluation/eval_sets.py``), one
corpus per set, read through the training stream; metrics are prefixed by the corpus name.
Each set is scored by the evaluation its data kind names (data_pipeline/kinds: `evaluation`),
from the registry here: `retrieval`, `grounding`, and whatever a plug-in registers with
`register_evaluation(name, function)`; a function takes (model, stream, settings) and returns
the set's metrics.

Under torch.distributed every rank reads and encodes the whole eval set (as X-VLM's
``evaluation`` does) and the ITM re-ranking, the expensive part, is split by query across ranks
and summed with an all-reduce. Every rank makes the same sequence of forward calls (queries
are padded to equal shares), so this also runs under ZeRO-3, where a forward call is a
collective; every rank returns the same metrics.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable

import torch
import torch.distributed as dist

from data_pipeline.kinds import data_kind
from data_pipeline.loader.stream import CorpusStream
from data_pipeline.spec import DataSpec
from training.evaluation.captioning import CaptioningSettings, evaluate_captioning
from training.evaluation.eval_sets import EmptyEvalSet, eval_batches, eval_stream
from training.evaluation.grounding import grounding_metrics
from training.evaluation.retrieval_metrics import region_text_metrics, retrieval_metrics
from training.model import TextEncoding, VisionEncoding
from training.model.regions import first_text_of_region

log = logging.getLogger(__name__)

# The ITM-re-ranked candidates are placed above every other: ITC cosine similarities lie in
# [-1, 1], ITM probabilities in [0, 1].
_RERANKED_OFFSET = 2.0


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    itm_top_k: int = 16  # candidates re-ranked by ITM per query; 0: ITC only
    itm_batch_size: int = 128  # pairs per ITM call


Evaluation = Callable[[object, CorpusStream, EvaluationSettings], dict]
EVALUATIONS: dict[str, Evaluation] = {}


def register_evaluation(name: str, evaluation: Evaluation) -> None:
    if name in EVALUATIONS:
        raise ValueError(f"evaluation {name!r} is registered twice")
    EVALUATIONS[name] = evaluation


@dataclasses.dataclass
class RetrievalFeatures:
    """Everything one eval set's ITC and ITM need, on the host."""

    vision_tokens: torch.Tensor  # (I, T, D)
    vision_features: torch.Tensor  # (I, E)
    text_hidden: torch.Tensor  # (N, L, H)
    text_mask: torch.Tensor  # (N, L)
    text_features: torch.Tensor  # (N, E)
    text_image: torch.Tensor  # (N,) long: the positive image of each text

    def vision(self, index: torch.Tensor, device) -> VisionEncoding:
        tokens = self.vision_tokens[index].to(device)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=device)
        return VisionEncoding(tokens, mask, self.vision_features[index].to(device))

    def text(self, index: torch.Tensor, device) -> TextEncoding:
        return TextEncoding(self.text_hidden[index].to(device), self.text_mask[index].to(device),
                            self.text_features[index].to(device))


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def encode_retrieval_set(model, stream: CorpusStream) -> RetrievalFeatures:
    device = _device_of(model)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in ("tokens", "vfeat", "hidden", "tmask", "tfeat", "owner")}
    images_so_far = 0
    video = data_kind(stream.corpus.kind).vision == "video"
    for batch in eval_batches(stream):
        if video:
            vision = model.encode_video(batch["frames"].to(device))
        else:
            vision = model.encode_image(batch["images"].to(device))
        text = model.encode_text(batch["text_ids"].to(device), batch["text_mask"].to(device))
        parts["tokens"].append(vision.tokens.cpu())
        parts["vfeat"].append(vision.features.float().cpu())
        parts["hidden"].append(text.hidden.cpu())
        parts["tmask"].append(text.mask.cpu())
        parts["tfeat"].append(text.features.float().cpu())
        parts["owner"].append(batch["text_sample"] + images_so_far)
        images_so_far += len(batch["keys"])
    if not images_so_far:
        raise EmptyEvalSet(f"eval {stream.corpus.kind} shards {stream.urls[:3]}...: no usable sample "
                         f"(skipped: {stream.counters.as_dict()})")
    cat = {name: torch.cat(values) for name, values in parts.items()}
    return RetrievalFeatures(cat["tokens"], cat["vfeat"], cat["hidden"], cat["tmask"], cat["tfeat"], cat["owner"])


def itm_rerank(similarity: torch.Tensor, top_k: int, pair_scores: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               pair_batch: int, device) -> torch.Tensor:
    """Scores (Q, C): each query's ``top_k`` candidates by ``similarity`` get 2 + their ITM
    probability from ``pair_scores(query_index, candidate_index)`` (both (P,) long), the
    rest keep their similarity. Queries are shared out over the ranks in equal, padded shares."""
    num_queries, num_candidates = similarity.shape
    top_k = min(top_k, num_candidates)
    if top_k <= 0 or num_queries == 0:
        return similarity.clone()
    rank, world = _world()
    top = similarity.topk(top_k, dim=1).indices  # (Q, k)
    share = math.ceil(num_queries / world)
    start = rank * share
    # Padded queries (beyond Q) repeat the last one; their scores are dropped.
    queries = torch.arange(start, start + share).clamp_max(num_queries - 1)
    pair_query = queries.repeat_interleave(top_k)
    pair_candidate = top[queries].flatten()
    real = (torch.arange(start, start + share) < num_queries).repeat_interleave(top_k)
    itm = torch.zeros(num_queries, top_k, device=device)
    scores = torch.cat([pair_scores(pair_query[i:i + pair_batch], pair_candidate[i:i + pair_batch]).float()
                        for i in range(0, len(pair_query), pair_batch)])
    slot = torch.arange(len(pair_query)) % top_k
    itm[pair_query[real], slot[real]] = scores[real.to(scores.device)].to(device)
    if world > 1:
        dist.all_reduce(itm)
    reranked = similarity.clone()
    reranked.scatter_(1, top, _RERANKED_OFFSET + itm.cpu())
    return reranked


@torch.no_grad()
def retrieval_scores(model, features: RetrievalFeatures, itm_top_k: int, itm_batch_size: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(text -> image (T, I), image -> text (I, T)) scores after ITM re-ranking."""
    device = _device_of(model)
    similarity = features.text_features @ features.vision_features.t()  # (T, I)

    def itm(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return model.itm_score(features.vision(images, device), features.text(texts, device))

    text_to_image = itm_rerank(similarity, itm_top_k, lambda texts, images: itm(images, texts), itm_batch_size, device)
    image_to_text = itm_rerank(similarity.t().contiguous(), itm_top_k, itm, itm_batch_size, device)
    return text_to_image, image_to_text


def evaluate_retrieval(model, stream: CorpusStream, settings: EvaluationSettings) -> dict[str, float]:
    features = encode_retrieval_set(model, stream)
    text_to_image, image_to_text = retrieval_scores(model, features, settings.itm_top_k, settings.itm_batch_size)
    metrics = retrieval_metrics(text_to_image, image_to_text, features.text_image)
    media = "videos" if data_kind(stream.corpus.kind).vision == "video" else "images"
    metrics.update({media: len(features.vision_features), "texts": len(features.text_features)})
    return metrics


@torch.no_grad()
def predict_boxes(model, stream: CorpusStream, max_queries: int | None = None) -> dict:
    """Boxes of every region text: ``predicted`` and ``true`` (N, 4) cxcywh; the ITC features of
    the texts (``text_features`` (N, E)) and of the regions they name (``region_features`` (M, E),
    each region once; ``text_region`` (N,) long, the region of each text); with ``texts``,
    ``images`` (uint8 (3, H, W), one per query) kept only when ``max_queries`` asks for examples."""
    device = _device_of(model)
    predicted, true, texts, images = [], [], [], []
    text_features, region_features, text_region = [], [], []
    regions_so_far = kept = 0
    for batch in eval_batches(stream):
        tokens = model.encode_image(batch["images"].to(device)).tokens
        text = model.encode_text(batch["text_ids"].to(device), batch["text_mask"].to(device))
        index = batch["image_index"].to(device)
        predicted.append(model.predict_box(tokens[index], text).float().cpu())
        true.append(batch["boxes"])
        # Regions numbered in the order of their first text; `first` holds that text of each.
        first, ids = torch.unique(first_text_of_region(batch["image_index"], batch["boxes"]), return_inverse=True)
        regions = model.encode_regions(tokens, index[first.to(device)], batch["patch_mask"][first].to(device))
        region_features.append(regions.features.float().cpu())
        text_features.append(text.features.float().cpu())
        text_region.append(ids + regions_so_far)
        regions_so_far += len(first)
        if max_queries is not None:
            take = min(max_queries - kept, len(batch["texts"]))
            texts += batch["texts"][:take]
            images += [batch["images"][i] for i in batch["image_index"][:take].tolist()]
            kept += take
            if kept >= max_queries:
                break
    if not true:
        raise EmptyEvalSet(f"eval region shards {stream.urls[:3]}...: no usable region "
                         f"(skipped: {stream.counters.as_dict()})")
    out = {"predicted": torch.cat(predicted), "true": torch.cat(true)}
    if max_queries is not None:
        out = {name: value[:max_queries] for name, value in out.items()}
        out.update(texts=texts, images=torch.stack(images))
    else:
        out.update(text_features=torch.cat(text_features), region_features=torch.cat(region_features),
                   text_region=torch.cat(text_region))
    return out


def evaluate_grounding(model, stream: CorpusStream, settings: EvaluationSettings) -> dict[str, float]:
    """Grounding (the box head, IoU >= 0.5, beside the centre-box baseline) and region-text
    retrieval by ITC: each text against every region of the set (`region_text/img_r1`, ...)
    and each region against every text (`region_text/txt_r1`, ...), with chance beside each."""
    boxes = predict_boxes(model, stream)
    metrics = grounding_metrics(boxes["predicted"], boxes["true"])
    metrics.update({f"region_text/{name}": value for name, value in
                    region_text_metrics(boxes["text_features"], boxes["region_features"], boxes["text_region"]).items()})
    return metrics


register_evaluation("retrieval", evaluate_retrieval)
register_evaluation("grounding", evaluate_grounding)


def evaluate(model, spec: DataSpec, itm_top_k: int = 16, itm_batch_size: int = 128,
             max_samples: int | None = None, captioning: CaptioningSettings | None = None,
             skip_empty: bool = False) -> dict[str, float]:
    """Every corpus of ``spec`` (a data spec in evaluation mode, e.g. from ``eval_data_spec``);
    a flat dict ``{corpus}/{metric}``: with the corpora ``eval_data_spec`` names,
    ``image/txt_r1`` ... ``image/r_mean``, ``region/grounding_acc``,
    ``region/centre_baseline_acc``, ``region/mean_iou``, ``video/txt_r1`` ..., plus counts
    (``image/images``, ``image/texts``, ``video/videos``, ``region/queries``, ``{corpus}/skipped``).
    ``max_samples``: only the first that many samples of each corpus, in stored order.
    ``captioning``: also caption each image of the image-text sets and score the captions
    against the image's texts (``image/bleu4``, ``image/cider``; see ``captioning.py``).
    A set that gives no usable sample raises EmptyEvalSet, or with ``skip_empty`` (training's
    evaluations, which must not end a run) is reported as ``{corpus}/unusable`` 1 with its
    skip count, and a warning.

    ``model`` is the bare X2VLM (``engine.module`` under DeepSpeed). It is put in eval mode
    for the run and back in its previous mode after."""
    if itm_top_k < 0:
        raise ValueError(f"itm_top_k must be >= 0, got {itm_top_k}")
    max_frames = model.config.vision.max_frames
    for corpus in spec.corpora:
        if data_kind(corpus.kind).vision == "video" and corpus.options.frames > max_frames:
            raise ValueError(f"eval corpus {corpus.name}: {corpus.options.frames} video frames exceed the model's "
                             f"vision.max_frames {max_frames}")
    streams = [eval_stream(spec, corpus, max_samples) for corpus in spec.corpora]
    settings = EvaluationSettings(itm_top_k, itm_batch_size)
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    try:
        for stream in streams:
            kind = data_kind(stream.corpus.kind)
            if kind.evaluation not in EVALUATIONS:
                raise ValueError(f"eval corpus {stream.corpus.name}: its kind {kind.name} is evaluated by "
                                 f"{kind.evaluation!r}, which is not registered (registered: {', '.join(EVALUATIONS)})")
            try:
                values = EVALUATIONS[kind.evaluation](model, stream, settings)
                if captioning is not None and kind.evaluation == "retrieval" and kind.vision == "image":
                    values.update(evaluate_captioning(model, eval_stream(spec, stream.corpus, max_samples),
                                                      captioning))
            except EmptyEvalSet as error:
                if not skip_empty:
                    raise
                log.warning("held-out set %s left out of this evaluation: %s", stream.corpus.name, error)
                values = {"unusable": 1}
            values["skipped"] = sum(stream.counters.as_dict().values())
            metrics.update({f"{stream.corpus.name}/{name}": value for name, value in values.items()})
    finally:
        model.train(was_training)
    return metrics
