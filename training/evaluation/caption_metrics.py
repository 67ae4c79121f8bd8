"""BLEU-4 and CIDEr-D of generated captions against reference captions, as the COCO caption
evaluation (github tylin/coco-caption, pycocoevalcap) computes them, written from its
definitions so that no Java tokenizer or network is needed.

Texts are compared as words: lower-cased, punctuation dropped (the PTB tokenizer of the COCO
evaluation drops punctuation tokens too), split at everything that is not a word character.

BLEU-4 (Papineni et al. 2002; pycocoevalcap's ``Bleu(4)``): corpus level. Over all images the
clipped n-gram matches (a candidate n-gram counts at most as often as it occurs in the
reference holding most of it) and the candidate n-grams are summed for n = 1..4; the score is
the geometric mean of the four ratios times the brevity penalty exp(1 - r / c) when the total
candidate length c is below r, the sum over images of the reference length closest to the
candidate's (the shorter on a tie). Like pycocoevalcap, each ratio is
(matches + 1e-15) / (candidates + 1e-9), so a corpus without any 4-gram match scores ~0, not
an error.

CIDEr-D (Vedantam et al. 2015; pycocoevalcap's ``CiderD``): for n = 1..4, each text is a
vector of n-gram counts weighted by log(number of images) - log(max(1, images whose references
contain the n-gram)): the inverse document frequency over the reference set. The candidate's
score against one reference is, per n, sum over the candidate's n-grams of
min(candidate weight, reference weight) x reference weight / (|candidate| |reference|) (clipped
cosine similarity; 0 where either norm is 0), times exp(-(l_c - l_r)^2 / (2 x 6^2)) where l is a
text's length (in pycocoevalcap's code: its number of bigrams); the scores are averaged over the
four n, over the image's references, times 10; the corpus score is the mean over images.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

MAX_N = 4
CIDER_SIGMA = 6.0
_WORD = re.compile(r"\w+")


def caption_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngram_counts(words: Sequence[str], max_n: int = MAX_N) -> Counter:
    """Counts of every n-gram (a tuple of words) of WORDS, n = 1..max_n."""
    return Counter(tuple(words[i:i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


def _check(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list:
    if set(candidates) != set(references):
        missing = sorted(set(candidates) ^ set(references))[:3]
        raise ValueError(f"candidates and references must have the same images; differing: {missing}")
    if not candidates:
        raise ValueError("no captions to score")
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"image {empty[0]!r} has no reference caption")
    return sorted(candidates)


def bleu(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], max_n: int = MAX_N) -> float:
    """Corpus BLEU-max_n of one candidate caption per image against its reference captions
    (both keyed by image)."""
    keys = _check(candidates, references)
    matches, guesses = [0] * max_n, [0] * max_n
    candidate_length = reference_length = 0
    for key in keys:
        words = caption_words(candidates[key])
        refs = [caption_words(r) for r in references[key]]
        counts = ngram_counts(words, max_n)
        most = Counter()
        for ref in refs:
            for gram, number in ngram_counts(ref, max_n).items():
                most[gram] = max(most[gram], number)
        for gram, number in counts.items():
            matches[len(gram) - 1] += min(number, most[gram])
        for n in range(1, max_n + 1):
            guesses[n - 1] += max(len(words) - n + 1, 0)
        candidate_length += len(words)
        reference_length += min((abs(len(ref) - len(words)), len(ref)) for ref in refs)[1]
    score = 1.0
    for n in range(max_n):
        score *= (matches[n] + 1e-15) / (guesses[n] + 1e-9)
    score **= 1.0 / max_n
    ratio = (candidate_length + 1e-15) / (reference_length + 1e-9)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
    return score


def _tfidf(counts: Counter, document_frequency: Counter, log_images: float
           ) -> tuple[list[dict], list[float], int]:
    vectors: list[dict] = [{} for _ in range(MAX_N)]
    norms = [0.0] * MAX_N
    bigrams = 0
    for gram, number in counts.items():
        n = len(gram) - 1
        weight = number * (log_images - math.log(max(1.0, document_frequency[gram])))
        vectors[n][gram] = weight
        norms[n] += weight * weight
        if n == 1:
            bigrams += number
    return vectors, [math.sqrt(v) for v in norms], bigrams


def cider_d_scores(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]],
                   sigma: float = CIDER_SIGMA) -> dict[str, float]:
    """CIDEr-D of each image's candidate caption (keyed as given)."""
    keys = _check(candidates, references)
    reference_counts = {key: [ngram_counts(caption_words(r)) for r in references[key]] for key in keys}
    document_frequency = Counter()
    for counts in reference_counts.values():
        document_frequency.update(set().union(*counts))
    log_images = math.log(float(len(keys)))
    scores = {}
    for key in keys:
        candidate, candidate_norm, candidate_length = _tfidf(
            ngram_counts(caption_words(candidates[key])), document_frequency, log_images)
        total = 0.0
        for counts in reference_counts[key]:
            reference, reference_norm, reference_length = _tfidf(counts, document_frequency, log_images)
            penalty = math.exp(-((candidate_length - reference_length) ** 2) / (2 * sigma ** 2))
            for n in range(MAX_N):
                value = sum(min(weight, reference[n].get(gram, 0.0)) * reference[n].get(gram, 0.0)
                            for gram, weight in candidate[n].items())
                if candidate_norm[n] and reference_norm[n]:
                    value /= candidate_norm[n] * reference_norm[n]
                total += value * penalty
        scores[key] = total / MAX_N / len(reference_counts[key]) * 10.0
    return scores


def cider_d(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], sigma: float = CIDER_SIGMA) -> float:
    """Corpus CIDEr-D: the mean of the images' scores."""
    scores = cider_d_scores(candidates, references, sigma)
    return sum(scores.values()) / len(scores)


def caption_metrics(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """{"bleu4": corpus BLEU-4, "cider": corpus CIDEr-D}."""
    return {"bleu4": bleu(candidates, references), "cider": cider_d(candidates, references)}
