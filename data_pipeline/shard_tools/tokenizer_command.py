"""`x2vlm-shards tokenizer`: a tokenizer trained from the captions of shards and annotation files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from ..io.shard_list import expand_shards
from ..schema import parse_meta
from ..skips import BadSample, Counters
from ..spec import TextSpec
from .readers import FORMATS, READERS, annotation_file_problem
from .records import AnnotationError, Record, Rejection
from .validate import caption_problem

# The shard reader (webdataset) and data_pipeline.text (transformers) import torch, seconds
# that every x2vlm-shards command would pay: they are imported where they are used. Hence
# data_pipeline.text.tokenizer_training.KINDS written out here too.
KINDS = ("wordpiece", "unigram")

DESCRIPTION = """\
Train a tokenizer from the texts of tar shards (--shards) and of annotation files in any format
`x2vlm-shards build` reads (--annotations FORMAT:FILE), and write it to --out as a Hugging Face
tokenizer folder: AutoTokenizer.from_pretrained(OUT) loads it with no download, and a data
config names it as text.tokenizer (the model's text.vocab_size must hold --vocab-size).

Kinds:
  wordpiece  BERT style (BertTokenizerFast): lower-cased, '##' continuations, [PAD] [UNK] [CLS]
             [SEP] [MASK]; pieces learned by WordPieceTrainer, or with --whole-words every
             character and then the most frequent whole words (as the demo tokenizer)
  unigram    XLM-R style (XLMRobertaTokenizerFast): a SentencePiece-like unigram model learned
             by UnigramTrainer, '\u2581' word starts, <s> <pad> </s> <unk> <mask>; pieces of at most
             --max-piece-length characters; a run of Chinese / Japanese characters (no spaces)
             is a word of its own, so no piece mixes CJK with Latin text or digits

Texts: the captions of each sample and each region's captions (its label when it has none),
cleaned as training cleans them (lower case, punctuation out, at most --max-words words).
Shards: a directory (its *.tar), a brace pattern, a glob or a URL, as a corpus's `shards`;
samples whose json cannot be read are skipped and counted. Annotation files: every text of
each record the format's reader accepts (no media is read; records it rejects are counted).
The same texts give the same tokens with the same ids.

Formats: """ + ", ".join(FORMATS)


def _annotation(value: str) -> tuple[str, Path]:
    fmt, sep, path = value.partition(":")
    if not sep or fmt not in READERS or not path:
        raise argparse.ArgumentTypeError(f"{value!r}: expected FORMAT:FILE with FORMAT one of {', '.join(FORMATS)}")
    return fmt, Path(path)


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a tokenizer (WordPiece or unigram) from shards or annotations",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", required=True, choices=KINDS, help="wordpiece (BERT) or unigram (XLM-R)")
    parser.add_argument("--vocab-size", required=True, type=int, metavar="N", help="most tokens, special tokens included")
    parser.add_argument("--shards", action="append", default=[], metavar="PATTERN",
                        help="shards to read: directory, brace pattern, glob or URL (repeatable)")
    parser.add_argument("--annotations", action="append", default=[], type=_annotation, metavar="FORMAT:FILE",
                        help="annotation file and its format, e.g. coco-captions:captions_train2014.json (repeatable)")
    parser.add_argument("--refcoco-split", action="append", default=[], metavar="SPLIT",
                        help="with refcoco annotations, read only refs of this split (repeatable; default: all)")
    parser.add_argument("--max-words", type=int, default=TextSpec.max_words, metavar="N",
                        help=f"words kept per text when cleaning, as text.max_words (default {TextSpec.max_words})")
    parser.add_argument("--whole-words", action="store_true",
                        help="wordpiece only: whole words by frequency instead of learned pieces")
    parser.add_argument("--max-piece-length", type=int, default=None, metavar="N",
                        help="unigram only: most characters in a piece (default 16, as SentencePiece); "
                             "smaller keeps pieces of unspaced CJK text word-sized on a small corpus")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="tokenizer folder to write")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"x2vlm-shards tokenizer: error: {message}", file=sys.stderr)
    return 2


def _usage_problem(args: argparse.Namespace) -> str | None:
    if not args.shards and not args.annotations:
        return "give --shards or --annotations (or both)"
    if args.vocab_size < 1:
        return f"--vocab-size must be at least 1, got {args.vocab_size}"
    if args.max_words < 1:
        return f"--max-words must be at least 1, got {args.max_words}"
    if args.whole_words and args.kind != "wordpiece":
        return "--whole-words is for --kind wordpiece; a unigram model learns its pieces"
    if args.max_piece_length is not None and args.kind != "unigram":
        return "--max-piece-length is for --kind unigram; WordPiece grows its pieces by merges"
    if args.max_piece_length is not None and args.max_piece_length < 1:
        return f"--max-piece-length must be at least 1, got {args.max_piece_length}"
    for _, path in args.annotations:
        problem = annotation_file_problem(path)
        if problem:
            return problem
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out} exists and is not a directory"
    return None


def shard_texts(url: str, skipped: Counters) -> Iterator[str]:
    """Every caption and region text of a shard, as the loader reads them."""
    from ..io.shard_reader import raw_samples

    for sample in raw_samples(url):
        try:
            meta = parse_meta(sample)
        except BadSample as exn:
            skipped.add(exn.reason)
            continue
        yield from meta.captions
        for region in meta.regions:
            yield from region.texts


def record_texts(record: Record) -> Iterator[str]:
    """The texts a build keeps of this record: valid captions, and each region's valid
    captions or else its label (what `schema.parse_meta` reads back from the shard)."""
    yield from (t.text for t in record.captions if caption_problem(t.text) is None)
    for region in record.regions:
        texts = [t.text for t in region.captions if caption_problem(t.text) is None]
        if not texts and caption_problem(region.label) is None:
            texts = [region.label]
        yield from texts


def annotation_texts(fmt: str, path: Path, splits: tuple[str, ...], skipped: Counters) -> Iterator[str]:
    for item in READERS[fmt](path, splits=splits):
        if isinstance(item, Rejection):
            skipped.add("rejected_record")
            continue
        yield from record_texts(item)


def _cleaned(texts: Iterator[str], max_words: int, skipped: Counters, bar) -> Iterator[str]:
    from ..text.cleaning import BadText, clean_caption

    for text in texts:
        try:
            yield clean_caption(text, max_words)
        except BadText:
            skipped.add("bad_text")
        bar.update()


def run(args: argparse.Namespace) -> int:
    problem = _usage_problem(args)
    if problem:
        return _fail(problem)
    try:
        urls = expand_shards(args.shards, where="--shards") if args.shards else []
    except (FileNotFoundError, ValueError) as error:
        return _fail(str(error))

    from ..io.shard_reader import READ_ERRORS  # imports torch (through webdataset): only when needed

    texts: list[str] = []
    skipped = Counters()
    with tqdm(unit=" texts", desc="reading texts", disable=args.quiet, smoothing=0.1) as bar:
        for url in urls:
            try:
                texts += _cleaned(shard_texts(url, skipped), args.max_words, skipped, bar)
            except READ_ERRORS as error:
                return _fail(f"shard {url} cannot be read ({type(error).__name__}: {error}); run x2vlm-shards verify")
        for fmt, path in args.annotations:
            try:
                texts += _cleaned(annotation_texts(fmt, path, tuple(args.refcoco_split), skipped), args.max_words,
                                  skipped, bar)
            except AnnotationError as error:
                return _fail(str(error))
    if not texts:
        return _fail("the inputs hold no caption or region text")

    from ..text.tokenizer_training import VocabularyTooSmall, train_tokenizer

    try:
        tokenizer = train_tokenizer(texts, args.kind, args.vocab_size, args.whole_words, show_progress=not args.quiet,
                                    max_piece_length=args.max_piece_length)
    except VocabularyTooSmall as error:
        return _fail(f"--vocab-size: {error}")
    try:
        tokenizer.save_pretrained(str(args.out))
    except OSError as error:
        return _fail(f"cannot write --out {args.out}: {error.strerror or error}")
    counts = ", ".join(f"{reason} {n}" for reason, n in skipped.as_dict().items()) or "none"
    print(f"{args.kind} tokenizer of {len(tokenizer)} tokens from {len(texts)} texts ({len(urls)} shards, "
          f"{len(args.annotations)} annotation files; skipped: {counts}) written to {args.out}")
    return 0
