"""The demo tokenizer: a whole-word WordPiece (`tokenizer_training`) of the demo corpus's
texts, saved as a transformers tokenizer directory (BertTokenizerFast), so that the demo and
the tests need no download.

    x2vlm-shards demo-tokenizer --corpus DEMO_DIR --out DIR

The vocabulary is small on purpose: the rarer words split into '##' pieces, so whole-word
masking has something to do. The output is a pure function of the corpus. The texts are read
as the demo writes them (each category name once, captions as written), not through
`x2vlm-shards tokenizer`: the demo model's learning figures are tied to this vocabulary.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from .tokenizer_training import train_tokenizer

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


def train_wordpiece(texts: list[str], out: Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The demo's whole-word WordPiece of `texts`, saved to `out`."""
    tokenizer = train_tokenizer(texts, "wordpiece", vocab_size, whole_words=True)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def build_demo_tokenizer(corpus: Path, out: Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    train_wordpiece(demo_texts(Path(corpus)), Path(out), vocab_size)
    return Path(out)
