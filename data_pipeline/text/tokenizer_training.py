"""Trains a tokenizer from texts, as the transformers tokenizer that `text.tokenizer` names
and `AutoTokenizer.from_pretrained` loads from a folder, with no download.

Two kinds:

- ``wordpiece``: BERT's (lower-casing BertNormalizer, BertPreTokenizer, '##' continuations;
  [PAD] [UNK] [CLS] [SEP] [MASK]), a `BertTokenizerFast`. The vocabulary is learned by
  `tokenizers`' WordPieceTrainer or, with `whole_words`, counted: every character as a word
  start and as a continuation, then the most frequent whole words (the demo tokenizer's).
- ``unigram``: XLM-R's (whitespace split, Metaspace '▁' word starts, a SentencePiece-style
  unigram model learned by UnigramTrainer; <s> <pad> </s> <unk> <mask>), an
  `XLMRobertaTokenizerFast`.

CJK text (Chinese, Japanese) has no spaces: the whitespace split hands a unigram trainer a
whole clause as one "word", and it learns pieces up to `max_piece_length` characters from
anywhere in it, as SentencePiece does on unsegmented text (XLM-R's vocabulary holds such
multi-character pieces). As SentencePiece's `split_by_unicode_script` does, the trainer here
sees each run of Han / Kana characters as a word of its own, so no piece spans CJK and Latin
text or digits; the tokenizer that loads needs no such split (no piece crosses the boundary,
so its segmentation cannot either). On a small corpus of repeated sentences the pieces grow
into whole phrases of the templates; a smaller `max_piece_length` keeps them word-sized.

Each tokenizer is trained with the normalizer and pre-tokenizer of its transformers class and
built from its vocabulary by that class, which is what `from_pretrained` does when it reads
the folder back (transformers 5 rebuilds the pipeline from the class and takes only the
vocabulary from tokenizer.json): what is trained is what loads.

The same texts give the same vocabulary (token -> id). tokenizers 0.23.3's trainers are not
deterministic as they come: WordPieceTrainer numbers each '##' continuation when it first
meets it in its hash-map walk over the words and breaks ties between equally frequent merges
by those numbers, so the vocabulary itself changes from run to run; UnigramTrainer learns the
same pieces, but orders and scores them in hash order. Here every continuation is numbered
up front in character order, which makes the WordPiece files byte-identical; unigram pieces
are numbered in spelling order and the characters the trainer adds back at the lowest scores
get those scores in character order, so its vocabulary is identical and its other scores
agree to about 1e-10 (the trainer sums expectations in hash order).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Sequence

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import BertTokenizerFast, PreTrainedTokenizerFast, XLMRobertaTokenizerFast

KINDS = ("wordpiece", "unigram")
CONTINUATION = "##"
# UnigramTrainer's step between the scores of the characters it adds back (tokenizers'
# unigram/trainer.rs, `finalize`).
_ADDED_CHARACTER_STEP = 0.0001
# SentencePiece's max_sentencepiece_length, which UnigramTrainer shares.
DEFAULT_MAX_PIECE_LENGTH = 16
# A run of Han or Kana characters (SentencePiece counts Kana and the prolonged sound mark as
# Han when it splits by script), with the '▁' of a word start before it.
_CJK_RUN = Regex(r"▁?[\p{Han}\p{Hiragana}\p{Katakana}ー]+")


class VocabularyTooSmall(ValueError):
    pass


def _pipeline(tokenizer_class) -> Tokenizer:
    """The class's own backend: its normalizer and pre-tokenizer, only special tokens in its vocabulary."""
    return tokenizer_class().backend_tokenizer


def _specials(tokenizer_class) -> list[str]:
    vocab = tokenizer_class().get_vocab()
    return sorted(vocab, key=vocab.get)


def _words(pipeline: Tokenizer, text: str) -> list[str]:
    normalized = pipeline.normalizer.normalize_str(text) if pipeline.normalizer else text
    return [word for word, _ in pipeline.pre_tokenizer.pre_tokenize_str(normalized)]


def _alphabet(pipeline: Tokenizer, texts: Sequence[str]) -> list[str]:
    """Every character the trainer will see in a word. Normalising is character by character
    (lower case, accents stripped, control characters dropped), so each distinct raw
    character goes through the pipeline once instead of every text."""
    raw: set[str] = set()
    for text in texts:
        raw.update(text)
    return sorted({ch for r in raw for word in _words(pipeline, r) for ch in word})


def _check_fits(vocab_size: int, needed: int) -> None:
    if needed > vocab_size:
        raise VocabularyTooSmall(f"vocab_size {vocab_size} is below the {needed} special and character tokens")


def whole_word_vocabulary(texts: Sequence[str], vocab_size: int) -> list[str]:
    """Special tokens, every character as a word start and as a '##' continuation, then the
    most frequent words (ties by spelling) until `vocab_size`: rarer words split into
    characters, so whole-word masking has something to do even on a tiny corpus."""
    pipeline = _pipeline(BertTokenizerFast)
    counts: Counter = Counter()
    for text in texts:
        counts.update(_words(pipeline, text))
    chars = sorted({ch for word in counts for ch in word})
    vocab = _specials(BertTokenizerFast) + chars + [f"{CONTINUATION}{ch}" for ch in chars]
    _check_fits(vocab_size, len(vocab))
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    return vocab + words[: vocab_size - len(vocab)]


def learned_wordpiece_vocabulary(texts: Sequence[str], vocab_size: int, show_progress: bool = False) -> list[str]:
    """WordPieceTrainer's vocabulary, in id order: special tokens, every '##' continuation,
    every character, then the learned pieces."""
    pipeline = _pipeline(BertTokenizerFast)
    alphabet = _alphabet(pipeline, texts)
    # Given as special tokens, the continuations are numbered in this order before training
    # starts instead of in the trainer's hash order.
    reserved = _specials(BertTokenizerFast) + [f"{CONTINUATION}{ch}" for ch in alphabet]
    _check_fits(vocab_size, len(reserved) + len(alphabet))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=reserved,
                                        continuing_subword_prefix=CONTINUATION, show_progress=show_progress)
    pipeline.train_from_iterator(texts, trainer, length=len(texts))
    vocab = pipeline.get_vocab(with_added_tokens=False)
    return sorted(vocab, key=vocab.get)


def _order_added_characters(scores: dict[str, float]) -> None:
    """UnigramTrainer keeps every character reachable: those its model dropped come back at
    the model's lowest score plus 1e-4 steps, handed out in hash order. Hand them out in
    character order instead (a score shared by several characters is handed out as often)."""
    if not scores:
        return
    lowest = min(scores.values())
    by_score: dict[float, list[str]] = defaultdict(list)
    for piece, score in scores.items():
        if len(piece) == 1:
            by_score[score].append(piece)
    added, values, step = [], [], 0.0
    while lowest + step in by_score:  # the trainer's own float arithmetic, so equality holds
        pieces = by_score[lowest + step]
        added += pieces
        values += [lowest + step] * len(pieces)
        step += _ADDED_CHARACTER_STEP
    for piece, value in zip(sorted(added), values):
        scores[piece] = value


def unigram_training_pipeline() -> Tokenizer:
    """XLMRobertaTokenizerFast's pipeline with every CJK run split off as a training word."""
    pipeline = _pipeline(XLMRobertaTokenizerFast)
    pipeline.pre_tokenizer = pre_tokenizers.Sequence([pipeline.pre_tokenizer, pre_tokenizers.Split(_CJK_RUN, "isolated")])
    return pipeline


def unigram_vocabulary(texts: Sequence[str], vocab_size: int, show_progress: bool = False,
                       max_piece_length: int = DEFAULT_MAX_PIECE_LENGTH) -> list[tuple[str, float]]:
    """(piece, log probability) pairs: the special tokens, then the pieces in spelling order."""
    if max_piece_length < 1:
        raise ValueError(f"max_piece_length must be >= 1, got {max_piece_length}")
    specials = _specials(XLMRobertaTokenizerFast)
    pipeline = unigram_training_pipeline()
    # The trainer keeps every character (the '▁' word start too) whatever the vocabulary size.
    _check_fits(vocab_size, len(specials) + len(_alphabet(pipeline, texts)))
    pipeline.model = models.Unigram()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      show_progress=show_progress, max_piece_length=max_piece_length)
    pipeline.train_from_iterator(texts, trainer, length=len(texts))
    pieces = [tuple(p) for p in json.loads(pipeline.to_str())["model"]["vocab"]]
    if [p for p, _ in pieces[:len(specials)]] != specials or len(pieces) > vocab_size:
        raise RuntimeError(f"UnigramTrainer gave {len(pieces)} pieces starting {pieces[:len(specials)]}: "
                           f"not at most {vocab_size} after the special tokens {specials}")
    scores = dict(pieces[len(specials):])
    _order_added_characters(scores)
    return [(p, 0.0) for p in specials] + sorted(scores.items())


def train_tokenizer(texts: Sequence[str], kind: str, vocab_size: int, whole_words: bool = False,
                    show_progress: bool = False, max_piece_length: int | None = None) -> PreTrainedTokenizerFast:
    """A tokenizer of `kind` with at most `vocab_size` tokens learned from `texts`; save it
    with `save_pretrained(folder)`. Raises `VocabularyTooSmall` when the special tokens and
    the characters of the texts do not fit. `max_piece_length` (unigram only; default 16)
    bounds the characters of a piece."""
    if not texts:
        raise ValueError("no texts to train a tokenizer on")
    if max_piece_length is not None and kind != "unigram":
        raise ValueError("max_piece_length is a unigram setting; WordPiece grows its pieces by merges")
    if kind == "wordpiece":
        vocab = (whole_word_vocabulary(texts, vocab_size) if whole_words
                 else learned_wordpiece_vocabulary(texts, vocab_size, show_progress))
        return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    if kind == "unigram":
        if whole_words:
            raise ValueError("whole_words is a WordPiece vocabulary; a unigram model learns its pieces")
        return XLMRobertaTokenizerFast(vocab=unigram_vocabulary(
            texts, vocab_size, show_progress, max_piece_length or DEFAULT_MAX_PIECE_LENGTH))
    raise ValueError(f"tokenizer kind must be one of {', '.join(KINDS)}, got {kind!r}")
