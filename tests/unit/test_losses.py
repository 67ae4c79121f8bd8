"""Each loss against an independent, loop-by-loop computation on small inputs."""
from __future__ import annotations

import math

import pytest
import torch

from training.objectives.box import box_losses
from training.objectives.itc import contrastive_loss
from training.objectives.itc_consistency import consistency_loss
from training.objectives.itm import matching_loss, sample_hard_negatives
from training.objectives.mlm import masked_language_model_loss
from training.objectives.positives import PairKeys, pair_positives


def _log_softmax_row(values: list[float], j: int) -> float:
    top = max(values)
    return values[j] - top - math.log(sum(math.exp(v - top) for v in values))


def naive_contrastive(vision: torch.Tensor, text: torch.Tensor, temperature: float, positives) -> float:
    n = len(vision)
    sim = [[float(vision[i] @ text[j]) / temperature for j in range(n)] for i in range(n)]
    loss_v2t = loss_t2v = 0.0
    for i in range(n):
        v_pos = [j for j in range(n) if positives[i][j]]
        loss_v2t -= sum(_log_softmax_row(sim[i], j) for j in v_pos) / len(v_pos)
        column = [sim[k][i] for k in range(n)]
        t_pos = [k for k in range(n) if positives[k][i]]
        loss_t2v -= sum(_log_softmax_row(column, k) for k in t_pos) / len(t_pos)
    return (loss_v2t / n + loss_t2v / n) / 2


def test_contrastive_loss_matches_naive_with_single_and_multiple_positives():
    torch.manual_seed(0)
    vision = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    temperature = torch.tensor(0.07, dtype=torch.float64)
    identity = torch.eye(5, dtype=torch.bool)
    grouped = identity.clone()
    grouped[0, 1] = grouped[1, 0] = grouped[3, 4] = grouped[4, 3] = True
    for positives in (identity, grouped):
        loss = contrastive_loss(vision, text, temperature, positives)
        expected = naive_contrastive(vision, text, 0.07, positives.tolist())
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def naive_consistency(vision, text, temperature: float) -> float:
    """GRIT-VLP's ITC consistency, loop by loop: row i's image-to-text softmax against its
    text-to-image softmax as the target, and the other way round; mean of the two over rows."""
    n = len(vision)
    v2t = [[float(vision[i] @ text[j]) / temperature for j in range(n)] for i in range(n)]
    t2v = [[float(text[i] @ vision[j]) / temperature for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        for j in range(n):
            total -= math.exp(_log_softmax_row(t2v[i], j)) * _log_softmax_row(v2t[i], j)
            total -= math.exp(_log_softmax_row(v2t[i], j)) * _log_softmax_row(t2v[i], j)
    return total / (2 * n)


def test_consistency_loss_matches_naive_and_is_zero_for_symmetric_similarities():
    torch.manual_seed(2)
    vision = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    temperature = torch.tensor(0.07, dtype=torch.float64)
    assert consistency_loss(vision, text, temperature).item() == pytest.approx(
        naive_consistency(vision, text, 0.07), rel=1e-9)
    # Texts equal to their images: both directions give one distribution, and the loss is its entropy.
    same = consistency_loss(vision, vision, temperature)
    probabilities = torch.softmax(vision @ vision.t() / 0.07, dim=1)
    entropy = -(probabilities * probabilities.log()).sum(dim=1).mean()
    assert same.item() == pytest.approx(entropy.item(), rel=1e-9)


def test_consistency_loss_over_this_ranks_rows_is_its_share_and_ignores_padding():
    torch.manual_seed(3)
    vision = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=-1)
    naive = naive_consistency(vision, text, 0.1)
    # The padding column repeats sample 0: scored, it would change every row's distributions.
    columns_v, columns_t = torch.cat([vision, vision[:1]]), torch.cat([text, text[:1]])
    valid = torch.tensor([True, True, True, True, False])
    shares = [consistency_loss(vision[rows], text[rows], torch.tensor(0.1, dtype=torch.float64), columns_v,
                               columns_t, column_valid=valid, normaliser=4 / 2)
              for rows in (slice(0, 2), slice(2, 4))]
    assert (sum(shares) / 2).item() == pytest.approx(naive, rel=1e-9)


def test_pair_positives_matches_the_rules_pair_by_pair():
    text_ids = torch.tensor([[101, 7, 8, 0], [101, 7, 8, 9], [101, 7, 8, 5], [101, 4, 0, 0], [101, 4, 0, 0]])
    text_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    image = torch.tensor([0, 0, 1, 2, 2])
    keys = PairKeys.local(text_ids, text_mask, image)
    # Pretend the last two samples came from another rank, where they are images 0 and 0.
    keys.rank = torch.tensor([0, 0, 0, 1, 1])
    keys.image = torch.tensor([0, 0, 1, 0, 0])
    image = keys.image
    for same_text in (False, True):
        result = pair_positives(keys, keys, same_text)
        for i in range(5):
            for j in range(5):
                same_rank = keys.rank[i] == keys.rank[j]
                texts_equal = (text_ids[i] * text_mask[i]).tolist() == (text_ids[j] * text_mask[j]).tolist()
                expected = bool((same_rank and image[i] == image[j]) or (same_text and texts_equal))
                assert result[i, j].item() == expected, (i, j, same_text)
    # Samples 0 and 1 share an image (and their text once padding is ignored); 0 and 3 share an
    # image index on different ranks (not positive); 3 and 4 share an image on rank 1.
    assert pair_positives(keys, keys, False)[0, 1] and pair_positives(keys, keys, False)[3, 4]
    assert not pair_positives(keys, keys, False)[0, 3]
    assert not pair_positives(keys, keys, False)[2, 0] and not pair_positives(keys, keys, True)[2, 0]


def test_hard_negatives_are_never_positives_and_follow_the_softmax():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 6) * 3
    positives = torch.eye(6, dtype=torch.bool)
    positives[0, 3] = positives[2, 5] = True
    positives[4] = True  # nothing to draw from in row 4
    draws = 4000
    counts = torch.zeros(6, 6)
    for _ in range(draws):
        index, valid = sample_hard_negatives(logits, positives, generator)
        counts[torch.arange(6), index] += 1
        assert valid.tolist() == [True, True, True, True, False, True]
        assert not positives[torch.arange(6), index][valid].any()
    for row in (0, 1, 2, 3, 5):
        allowed = [j for j in range(6) if not positives[row, j]]
        weights = [math.exp(logits[row, j].item()) for j in allowed]
        for j, w in zip(allowed, weights):
            expected = w / sum(weights)
            assert counts[row, j].item() / draws == pytest.approx(expected, abs=0.03)


def test_hard_negatives_survive_extreme_similarities():
    logits = torch.tensor([[1000.0, -1000.0, -2000.0], [5000.0, 0.0, 4000.0], [0.0, 0.0, 0.0]])
    positives = torch.eye(3, dtype=torch.bool)
    index, valid = sample_hard_negatives(logits, positives)
    # Row 0: the only non-positive with any weight is column 1; row 1: column 0 dominates.
    assert index[:2].tolist() == [1, 0] and index[2].item() in (0, 1)
    assert valid.all()


def test_non_finite_similarities_are_never_drawn_and_an_all_nan_row_is_invalid():
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[0.0, nan, 1.0], [nan, nan, nan], [0.0, inf, 0.0]])
    positives = torch.eye(3, dtype=torch.bool)
    for _ in range(20):
        index, valid = sample_hard_negatives(logits, positives)
        assert index[0].item() == 2 and index[2].item() == 0
        assert valid.tolist() == [True, False, True]


def test_matching_loss_matches_naive_weighted_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(6, 2, dtype=torch.float64)
    labels = torch.tensor([1, 1, 0, 0, 0, 0])
    weights = torch.tensor([True, True, True, False, True, True])
    total, count = 0.0, 0
    for i in range(6):
        if weights[i]:
            total -= _log_softmax_row(logits[i].tolist(), labels[i].item())
            count += 1
    assert matching_loss(logits, labels, weights).item() == pytest.approx(total / count, rel=1e-6)


def test_masked_language_model_loss_matches_naive():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 7).double()
    hidden = torch.randn(2, 5, 4, dtype=torch.float64)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[0, 4], labels[1, 2] = 3, 6, 0
    total, count = 0.0, 0
    for b in range(2):
        for t in range(5):
            if labels[b, t] != -100:
                scores = head(hidden[b, t]).tolist()
                total -= _log_softmax_row(scores, labels[b, t].item())
                count += 1
    assert masked_language_model_loss(head, hidden, labels).item() == pytest.approx(total / count, rel=1e-6)


def _naive_giou(p, t) -> float:
    def corners(b):
        return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2

    ax0, ay0, ax1, ay1 = corners(p)
    bx0, by0, bx1, by1 = corners(t)
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def test_box_losses_match_naive_l1_and_giou():
    predicted = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3]], dtype=torch.float64)
    target = torch.tensor([[0.55, 0.45, 0.3, 0.3], [0.8, 0.1, 0.2, 0.1], [0.2, 0.2, 0.3, 0.3]], dtype=torch.float64)
    l1, giou = box_losses(predicted, target)
    expected_l1 = sum(abs(a - b) for p, t in zip(predicted.tolist(), target.tolist()) for a, b in zip(p, t)) / 3
    expected_giou = sum(1 - _naive_giou(p, t) for p, t in zip(predicted.tolist(), target.tolist())) / 3
    assert l1.item() == pytest.approx(expected_l1, rel=1e-6)
    assert giou.item() == pytest.approx(expected_giou, rel=1e-6)
    # Identical boxes have GIoU 1; disjoint ones have GIoU below 0.
    assert _naive_giou(predicted[2].tolist(), target[2].tolist()) == pytest.approx(1.0)
    assert _naive_giou(predicted[1].tolist(), target[1].tolist()) < 0


def test_contrastive_loss_over_this_ranks_rows_is_its_share_of_the_global_loss():
    """Rows 0-1 of a global batch of 4 (plus a padding column), against a naive global loss."""
    torch.manual_seed(1)
    vision = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=-1)
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 2] = positives[2, 0] = True
    naive = naive_contrastive(vision, text, 0.1, positives.tolist())
    pad = torch.zeros(1, 6, dtype=torch.float64)
    columns_v, columns_t = torch.cat([vision, pad]), torch.cat([text, pad])
    valid = torch.tensor([True, True, True, True, False])
    shares = []
    for rows in (slice(0, 2), slice(2, 4)):
        padded_positives = torch.cat([positives[rows], torch.ones(2, 1, dtype=torch.bool)], dim=1)  # pad ignored
        shares.append(contrastive_loss(vision[rows], text[rows], torch.tensor(0.1, dtype=torch.float64),
                                       padded_positives, columns_v, columns_t, column_valid=valid, normaliser=4 / 2))
    assert (sum(shares) / 2).item() == pytest.approx(naive, rel=1e-9)


def test_text_hash_ignores_padding_and_separates_texts():
    from training.objectives.positives import text_hash

    ids = torch.tensor([[101, 7, 8, 0, 0], [101, 7, 8, 9, 0], [101, 8, 7, 0, 0], [101, 7, 8, 5, 5]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    hashes = text_hash(ids, mask).tolist()
    assert hashes[0] == hashes[1]  # the same text once padding is ignored
    assert len({hashes[0], hashes[2], hashes[3]}) == 3  # order and length matter
    assert text_hash(ids[:1, :3], mask[:1, :3]).tolist() == hashes[:1]  # shorter padding, same hash
    many = torch.randint(1000, 30000, (2000, 12))
    assert len(set(text_hash(many, torch.ones_like(many)).tolist())) == len({tuple(r) for r in many.tolist()})


def test_masked_language_model_loss_on_listed_positions_equals_the_full_loss():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 7).double()
    hidden = torch.randn(2, 5, 4, dtype=torch.float64)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[0, 4], labels[1, 2] = 3, 6, 0
    positions = torch.tensor([[1, 4], [2, 0]])  # row 1 pads with an unmasked position
    full = masked_language_model_loss(head, hidden, labels)
    listed = masked_language_model_loss(head, hidden, labels, positions)
    torch.testing.assert_close(listed, full)
