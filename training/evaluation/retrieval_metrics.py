"""Recall@K of cross-modal retrieval, from a score matrix and which pairs are positive.

Naming follows X-VLM / X²-VLM's ``itm_eval``: ``txt_r{K}`` is image-to-text retrieval (an
image query, texts retrieved), ``img_r{K}`` is text-to-image retrieval.

Ties count against the query: a positive's rank is the number of non-positive candidates
scoring at least as high as it, so equal scores can never produce a hit by the luck of
candidate order, and a model whose scores are all equal gets R@1 = 0, not 1.
"""
from __future__ import annotations

import math

import torch

RECALL_KS = (1, 5, 10)
REGION_KS = (1, 5)


def positive_ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """(Q,) long: for each query, how many non-positive candidates score >= its best positive.

    scores (Q, C) float; positives (Q, C) bool with at least one True per row. Rank 0 is a
    hit at R@1."""
    if scores.shape != positives.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} must be the same (Q, C)")
    positives = positives.bool()
    lonely = (~positives.any(dim=1)).nonzero().flatten()
    if len(lonely):
        raise ValueError(f"query {int(lonely[0])} has no positive candidate")
    scores = scores.float()
    best_positive = scores.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values
    return ((scores >= best_positive) & ~positives).sum(dim=1)


def recalls(scores: torch.Tensor, positives: torch.Tensor, ks: tuple[int, ...] = RECALL_KS) -> dict[int, float]:
    """{K: fraction of queries with a positive among the top K}."""
    ranks = positive_ranks(scores, positives)
    return {k: int((ranks < k).sum()) / len(ranks) for k in ks}


def retrieval_metrics(text_to_image: torch.Tensor, image_to_text: torch.Tensor, text_image: torch.Tensor,
                      ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """R@K in both directions and their means.

    text_to_image (T, I): score of image i for text query t; image_to_text (I, T): score of text
    t for image query i (after ITM re-ranking the two differ, each re-ranks its own top k);
    text_image (T,) long: the one positive image of each text. An image's positives are all its
    texts. Returns ``txt_r{K}``, ``img_r{K}``, ``txt_r_mean``, ``img_r_mean``, ``r_mean``."""
    num_texts, num_images = text_to_image.shape
    if image_to_text.shape != (num_images, num_texts):
        raise ValueError(f"image_to_text is {tuple(image_to_text.shape)}, expected {(num_images, num_texts)}")
    if text_image.shape != (num_texts,):
        raise ValueError(f"text_image is {tuple(text_image.shape)}, expected ({num_texts},)")
    positives = torch.zeros(num_texts, num_images, dtype=torch.bool)
    positives[torch.arange(num_texts), text_image.long().cpu()] = True
    text_recall = recalls(image_to_text.cpu(), positives.t(), ks)
    image_recall = recalls(text_to_image.cpu(), positives, ks)
    out = {f"txt_r{k}": text_recall[k] for k in ks}
    out.update({f"img_r{k}": image_recall[k] for k in ks})
    out["txt_r_mean"] = sum(text_recall.values()) / len(ks)
    out["img_r_mean"] = sum(image_recall.values()) / len(ks)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def chance_recall(positives: int, candidates: int, k: int) -> float:
    """The probability that a random ranking of CANDIDATES puts one of POSITIVES in its top K."""
    k = min(k, candidates)
    return 1 - math.comb(candidates - positives, k) / math.comb(candidates, k)


def region_text_metrics(text_features: torch.Tensor, region_features: torch.Tensor, text_region: torch.Tensor,
                        ks: tuple[int, ...] = REGION_KS) -> dict[str, float]:
    """Region-level retrieval by cosine similarity of the ITC features: ``img_r{K}`` each text
    against every region (its own region the positive), ``txt_r{K}`` each region against every
    text (its texts the positives), and ``img_r{K}_chance`` / ``txt_r{K}_chance``, what a random
    ranking scores; ``regions`` and ``texts`` counted."""
    similarity = text_features.float() @ region_features.float().t()  # (T, M)
    metrics = retrieval_metrics(similarity, similarity.t().contiguous(), text_region, ks)
    num_texts, num_regions = similarity.shape
    per_region = torch.bincount(text_region.long(), minlength=num_regions).tolist()
    out = {}
    for k in ks:
        out[f"img_r{k}"] = metrics[f"img_r{k}"]
        out[f"img_r{k}_chance"] = chance_recall(1, num_regions, k)
        out[f"txt_r{k}"] = metrics[f"txt_r{k}"]
        out[f"txt_r{k}_chance"] = sum(chance_recall(p, num_texts, k) for p in per_region) / num_regions
    return {**out, "regions": num_regions, "texts": num_texts}
