"""Retrieval recalls, ITM re-ranking and grounding IoU on hand-built cases with known answers."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from training.evaluation import box_iou, centre_boxes, grounding_accuracy, positive_ranks, recalls
from training.evaluation.retrieval_metrics import retrieval_metrics
from training.evaluation.evaluator import RetrievalFeatures, itm_rerank, retrieval_scores


def _scores_from_orders(orders: list[list[int]]) -> torch.Tensor:
    """Row q scores candidate orders[q][p] at C - p: candidates listed first score highest."""
    count = len(orders[0])
    scores = torch.zeros(len(orders), count)
    for q, order in enumerate(orders):
        for position, candidate in enumerate(order):
            scores[q, candidate] = float(count - position)
    return scores


# Recall@K ---------------------------------------------------------------------------------

def test_identical_image_and_text_embeddings_give_recall_one_everywhere():
    # Acceptance point: each text embedding equals its image's embedding; 3 images, 5 texts.
    images = F.normalize(torch.tensor([[1.0, 0.2, 0.0, 0.0], [0.0, 1.0, 0.3, 0.0], [0.1, 0.0, 0.0, 1.0]]), dim=-1)
    text_image = torch.tensor([0, 0, 1, 2, 2])
    texts = images[text_image]
    similarity = texts @ images.t()
    metrics = retrieval_metrics(similarity, similarity.t(), text_image)
    assert metrics == {"txt_r1": 1.0, "txt_r5": 1.0, "txt_r10": 1.0, "img_r1": 1.0, "img_r5": 1.0, "img_r10": 1.0,
                       "txt_r_mean": 1.0, "img_r_mean": 1.0, "r_mean": 1.0}


def test_identical_embeddings_through_the_evaluators_itc_path_give_recall_one():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(12, 8), dim=-1)
    text_image = torch.arange(12).repeat_interleave(2)  # two captions per image
    features = RetrievalFeatures(
        vision_tokens=torch.zeros(12, 2, 4), vision_features=images, text_hidden=torch.zeros(24, 3, 4),
        text_mask=torch.ones(24, 3, dtype=torch.long), text_features=images[text_image], text_image=text_image)
    model = torch.nn.Linear(1, 1)  # only its device is read: ITM is off with top k = 0
    text_to_image, image_to_text = retrieval_scores(model, features, itm_top_k=0, itm_batch_size=8)
    metrics = retrieval_metrics(text_to_image, image_to_text, text_image)
    assert metrics["img_r1"] == 1.0 and metrics["txt_r1"] == 1.0


def test_known_positive_positions_give_known_recalls():
    # 12 candidates; the positive (candidate 0) is listed at positions 0, 0, 3, 7 and 11.
    rest = list(range(1, 12))
    orders = [[0] + rest, [0] + rest, rest[:3] + [0] + rest[3:], rest[:7] + [0] + rest[7:], rest + [0]]
    scores = _scores_from_orders(orders)
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[:, 0] = True
    assert positive_ranks(scores, positives).tolist() == [0, 0, 3, 7, 11]
    assert recalls(scores, positives) == {1: 2 / 5, 5: 3 / 5, 10: 4 / 5}


def test_a_permutation_of_images_gives_text_to_image_recall_from_its_fixed_points():
    # Text t's best-scoring image is perm[t]; its own image t comes second unless perm[t] == t.
    perm = torch.tensor([0, 2, 1, 3, 5, 4])
    similarity = torch.eye(6)[perm] + 0.5 * torch.eye(6)
    similarity[torch.arange(6), perm] = 1.0
    metrics = retrieval_metrics(similarity, similarity.t(), torch.arange(6))
    assert metrics["img_r1"] == 2 / 6  # texts 0 and 3
    assert metrics["img_r5"] == 1.0


def test_an_image_hits_when_any_of_its_texts_is_in_the_top_k():
    # Image 0 owns texts 0 and 3. Its text order: 1, 3, 2, 0 -> best positive (text 3) at rank 1.
    text_image = torch.tensor([0, 1, 1, 0])
    image_to_text = _scores_from_orders([[1, 3, 2, 0], [1, 2, 0, 3]])
    text_to_image = _scores_from_orders([[0, 1], [1, 0], [1, 0], [0, 1]])
    metrics = retrieval_metrics(text_to_image, image_to_text, text_image, ks=(1, 2))
    assert metrics["txt_r1"] == 0.5 and metrics["txt_r2"] == 1.0
    assert metrics["img_r1"] == 1.0


def test_ties_count_against_the_query_whatever_the_candidate_order():
    flat = torch.zeros(4, 4)
    positives = torch.eye(4, dtype=torch.bool)
    assert positive_ranks(flat, positives).tolist() == [3, 3, 3, 3]
    assert recalls(flat, positives, ks=(1,)) == {1: 0.0}
    # Positive tied with one negative at the top: rank 1, whichever column comes first.
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    positives = torch.tensor([[True, False, False], [False, False, True]])
    assert positive_ranks(scores, positives).tolist() == [1, 1]
    swapped = [2, 1, 0]
    assert positive_ranks(scores[:, swapped], positives[:, swapped]).tolist() == [1, 1]


def test_a_query_without_a_positive_is_an_error_naming_it():
    positives = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="query 1 has no positive"):
        positive_ranks(torch.zeros(2, 2), positives)
    with pytest.raises(ValueError, match="image_to_text"):
        retrieval_metrics(torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([0, 1, 1]))


# ITM re-ranking ---------------------------------------------------------------------------

def _candidate_index_as_score(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """A stand-in ITM head that prefers higher candidate numbers, whatever the query."""
    return candidates.float() / 10


def test_itm_reranks_the_itc_top_k_and_keeps_the_rest_below():
    similarity = torch.tensor([[0.9, 0.8, 0.1, 0.7], [0.1, 0.2, 0.3, 0.4]])
    scores = itm_rerank(similarity, 2, _candidate_index_as_score, pair_batch=3, device=torch.device("cpu"))
    # Query 0: ITC top 2 are candidates 0 and 1; ITM prefers 1. Candidate 3 (ITC 0.7) stays below both.
    assert scores[0].argsort(descending=True).tolist() == [1, 0, 3, 2]
    assert torch.allclose(scores[0], torch.tensor([2.0, 2.1, 0.1, 0.7]))
    assert scores[1].argsort(descending=True).tolist() == [3, 2, 1, 0]
    assert torch.equal(itm_rerank(similarity, 0, _candidate_index_as_score, 3, torch.device("cpu")), similarity)


# Grounding --------------------------------------------------------------------------------

def test_box_iou_against_hand_computed_values():
    predicted = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5],
                              [0.2, 0.2, 0.2, 0.2], [0.3, 0.6, 0.2, 0.4]])
    true = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.25, 0.5], [0.5, 0.25, 0.5, 0.5],
                         [0.8, 0.8, 0.2, 0.2], [0.3, 0.6, 0.2, 0.4]])
    # identical; half the area inside; [0, .5]x[0, .5] vs [.25, .75]x[0, .5]: .125 / .375; disjoint; identical
    assert torch.allclose(box_iou(predicted, true), torch.tensor([1.0, 0.5, 1 / 3, 0.0, 1.0]))
    # IoU exactly 0.5 counts as correct.
    assert grounding_accuracy(predicted, true) == 3 / 5


def test_centre_box_baseline_uses_the_mean_true_size():
    true = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2]])
    side = 0.8 / 3
    assert torch.allclose(centre_boxes(true), torch.tensor([[0.5, 0.5, side, side]] * 3))
    # vs the 0.4 box: (side / 0.4)^2 = 0.44, a miss; vs the 0.2 box: (0.2 / side)^2 = 0.5625, a hit; disjoint.
    assert grounding_accuracy(centre_boxes(true), true) == 1 / 3


def test_box_shapes_are_checked():
    with pytest.raises(ValueError, match="must both be"):
        box_iou(torch.zeros(2, 4), torch.zeros(3, 4))


def test_region_text_recalls_and_their_chance_by_hand():
    from training.evaluation.retrieval_metrics import chance_recall, region_text_metrics
    from training.model.regions import first_text_of_region

    # Texts 0, 1 of one box of image 0, text 2 of another box of image 0, text 3 of image 1.
    first = first_text_of_region(torch.tensor([0, 0, 0, 1]), torch.tensor([[.5, .5, .2, .2], [.5, .5, .2, .2],
                                                                           [.2, .2, .1, .1], [.5, .5, .2, .2]]))
    assert first.tolist() == [0, 0, 2, 3]
    _, ids = torch.unique(first, return_inverse=True)  # as the evaluator numbers the regions
    assert ids.tolist() == [0, 0, 1, 2]
    regions = torch.eye(3)
    # Texts 0 and 3 rank their regions first, text 2 second (after region 0), text 1 last.
    texts = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.3, 0.9], [0.8, 0.5, 0.0], [0.0, 0.1, 1.0]])
    metrics = region_text_metrics(texts, regions, ids, ks=(1, 2))
    assert metrics["img_r1"] == 2 / 4 and metrics["img_r2"] == 3 / 4
    # Each region's best text is its own: text 0 (1.0) for region 0, text 2 (0.5) for region 1,
    # text 3 (1.0) for region 2.
    assert metrics["txt_r1"] == 1.0
    assert metrics["img_r1_chance"] == pytest.approx(1 / 3) and metrics["img_r2_chance"] == pytest.approx(2 / 3)
    # Region 0 has 2 of the 4 texts, the others one: R@1 chance (2/4 + 1/4 + 1/4) / 3.
    assert metrics["txt_r1_chance"] == pytest.approx((2 / 4 + 1 / 4 + 1 / 4) / 3)
    assert chance_recall(2, 4, 2) == pytest.approx(1 - 1 / 6)  # C(2,2) / C(4,2) misses both
    assert (metrics["regions"], metrics["texts"]) == (3, 4)
