"""A WordPiece tokenizer built from the demo corpus's texts, saved as a transformers
tokenizer directory (BertTokenizerFast), so that the demo and the tests need no download.

    python -m data_pipeline.text.demo_tokenizer --corpus DEMO_DIR --out DIR

The vocabulary is small on purpose: the rarer words split into '##' pieces, so whole-word
masking has something to do. The output is a pure function of the corpus.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DEFAULT_VOCAB_SIZE = 80


def demo_texts(corpus: Path) -> list[str]:
    """Every caption, region phrase, category name and video caption, in file order."""
    ann = corpus / "annotations"
    texts: list[str] = []
    for split in ("train", "eval"):
        captions = json.loads((ann / f"coco_captions_{split}.json").read_text(encoding="utf-8"))
        texts += [a["caption"] for a in captions["annotations"]]
        instances = json.loads((ann / f"coco_instances_{split}.json").read_text(encoding="utf-8"))
        texts += [c["name"] for c in instances["categories"]]
        for image in json.loads((ann / f"vg_regions_{split}.json").read_text(encoding="utf-8")):
            texts += [r["phrase"] for r in image["regions"]]
        for line in (ann / f"videos_{split}.jsonl").read_text(encoding="utf-8").splitlines():
            texts += json.loads(line)["captions"]
    return texts


def wordpiece_vocabulary(texts: list[str], vocab_size: int) -> list[str]:
    """Special tokens, every character as a word start and as a '##' continuation, then
    the most frequent words (ties by spelling) until `vocab_size`.

    Chosen by counting rather than with `tokenizers`' WordPieceTrainer, whose merges break
    ties in hash order and so give a different vocabulary on every run."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({ch for word in counts for ch in word})
    vocab = SPECIAL_TOKENS + chars + [f"##{ch}" for ch in chars]
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is below the {len(vocab)} special and character tokens")
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    return vocab + words[: vocab_size - len(vocab)]


def train_wordpiece(texts: list[str], out: Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> BertTokenizerFast:
    vocab = {token: i for i, token in enumerate(wordpiece_vocabulary(texts, vocab_size))}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = BertTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", do_lower_case=True)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return fast


def build_demo_tokenizer(corpus: Path, out: Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    train_wordpiece(demo_texts(Path(corpus)), Path(out), vocab_size)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="demo corpus directory (x2vlm-shards demo --out)")
    parser.add_argument("--out", type=Path, required=True, help="tokenizer directory to write")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    args = parser.parse_args(argv)
    build_demo_tokenizer(args.corpus, args.out, args.vocab_size)
    print(f"tokenizer written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
