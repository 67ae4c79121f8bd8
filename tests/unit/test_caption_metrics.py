"""BLEU-4 and CIDEr-D (training/evaluation/caption_metrics.py) against values computed by hand
from the COCO caption evaluation's definitions."""
from __future__ import annotations

import math

import pytest

from training.evaluation.caption_metrics import bleu, caption_metrics, caption_words, cider_d, cider_d_scores


def test_words_are_lower_cased_without_punctuation():
    assert caption_words("A red circle, on the LEFT.") == ["a", "red", "circle", "on", "the", "left"]


def test_bleu_of_identical_captions_is_one():
    captions = {"a": "a red circle on the left", "b": "two squares side by side"}
    assert bleu(captions, {k: [v] for k, v in captions.items()}) == pytest.approx(1.0, abs=1e-9)


def test_bleu2_by_hand():
    # unigrams: the x2, cat, on, mat of 6 match; bigrams: the cat, on the, the mat of 5.
    value = bleu({"i": "the cat sat on the mat"}, {"i": ["the cat is on the mat"]}, max_n=2)
    assert value == pytest.approx(math.sqrt(5 / 6 * 3 / 5), rel=1e-8)


def test_bleu_brevity_penalty_uses_the_closest_reference_length():
    # Every n-gram matches; c = 6, the closest reference has 7 words (the other 3): exp(1 - 7/6).
    value = bleu({"i": "a red circle on the left"}, {"i": ["a red circle on the left side", "a blue square"]})
    assert value == pytest.approx(math.exp(1 - 7 / 6), rel=1e-8)
    # Shorter than its only reference: c = 2, r = 6.
    assert bleu({"i": "the cat"}, {"i": ["the cat sat on the mat"]}, max_n=2) == pytest.approx(math.exp(-2), rel=1e-8)


def test_bleu4_sums_matches_over_the_corpus():
    # Image b alone has no 3- or 4-gram match; the corpus has 6/8, 4/6, 2/4 and 1/2.
    value = bleu({"a": "a b c d", "b": "a b x y"}, {"a": ["a b c d"], "b": ["a b c d"]})
    assert value == pytest.approx((6 / 8 * 4 / 6 * 2 / 4 * 1 / 2) ** 0.25, rel=1e-8)
    assert bleu({"b": "a b x y"}, {"b": ["a b c d"]}) < 1e-3


def test_cider_of_identical_captions_is_ten():
    captions = {"a": "a red circle on the left", "b": "two squares side by side"}
    assert cider_d(captions, {k: [v] for k, v in captions.items()}) == pytest.approx(10.0, rel=1e-8)


def test_cider_d_by_hand():
    # Two images: every reference n-gram occurs in one image's references, idf = ln 2 - ln 1;
    # an n-gram of no reference has idf ln 2 - ln max(1, 0) too.
    references = {"1": ["red circle"], "2": ["blue square"]}
    # Image 1: unigrams share "red": ln2^2 / (sqrt2 ln2 x sqrt2 ln2) = 1/2; bigrams share none;
    # no 3- or 4-grams (norm 0 -> 0); one bigram each: no length penalty. (1/2) / 4 x 10.
    # Image 2: identical, unigrams 1 and bigrams 1: 2 / 4 x 10.
    scores = cider_d_scores({"1": "red square", "2": "blue square"}, references)
    assert scores == pytest.approx({"1": 1.25, "2": 5.0}, rel=1e-8)
    assert cider_d({"1": "red square", "2": "blue square"}, references) == pytest.approx(3.125, rel=1e-8)
    # Length penalty: "red" has no bigram against the reference's one: exp(-1 / 72); unigram
    # cosine ln2^2 / (ln2 x sqrt2 ln2).
    scores = cider_d_scores({"1": "red", "2": "blue square"}, references)
    assert scores["1"] == pytest.approx(math.exp(-1 / 72) / math.sqrt(2) / 4 * 10, rel=1e-8)
    # Clipping: "red red" counts "red" twice (weight 2 ln2) but is credited min(2 ln2, ln2) x ln2;
    # its norm is 2 ln2: 1 / (2 sqrt2).
    scores = cider_d_scores({"1": "red red", "2": "blue square"}, references)
    assert scores["1"] == pytest.approx(1 / (2 * math.sqrt(2)) / 4 * 10, rel=1e-8)


def test_cider_averages_over_references_and_a_constant_caption_scores_low():
    references = {"1": ["a red circle", "a red circle on the left"], "2": ["a blue square", "a blue square at the top"],
                  "3": ["a green star", "a green star in the center"]}
    right = caption_metrics({k: v[0] for k, v in references.items()}, references)
    constant = caption_metrics({k: "a red circle" for k in references}, references)
    assert right["cider"] > 2 * constant["cider"] and right["bleu4"] > constant["bleu4"]


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="same images"):
        bleu({"a": "x"}, {"b": ["x"]})
    with pytest.raises(ValueError, match="no reference"):
        cider_d({"a": "x"}, {"a": []})
    with pytest.raises(ValueError, match="no captions"):
        cider_d({}, {})


def test_the_constant_caption_is_the_most_frequent_reference_of_the_set():
    from training.evaluation.captioning import constant_caption

    references = {"1": ["a red circle", "a blue square"], "2": ["a blue square"], "3": ["a red circle"],
                  "4": ["a blue square", "a green star"]}
    assert constant_caption(references) == "a blue square"
    assert constant_caption({"1": ["b"], "2": ["a"]}) == "b"  # a tie: the first in the set's order
