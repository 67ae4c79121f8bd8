"""`x2vlm-shards demo-tokenizer`: the demo tokenizer of a demo corpus (data_pipeline/text/demo_tokenizer.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_pipeline.text.demo_tokenizer import DEFAULT_VOCAB_SIZE, build_demo_tokenizer


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo-tokenizer",
        help="write the demo tokenizer of a demo corpus (a whole-word WordPiece of its texts)",
        description=("Write the tokenizer the demo model is trained with: a whole-word WordPiece of every caption, "
                     "region phrase, category name and video caption of a demo corpus (x2vlm-shards demo), saved "
                     "as a transformers tokenizer folder. The output is a pure function of the corpus."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--corpus", type=Path, required=True, help="demo corpus directory (x2vlm-shards demo --out)")
    parser.add_argument("--out", type=Path, required=True, help="tokenizer directory to write")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="WordPiece vocabulary size")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not (args.corpus / "annotations").is_dir():
        print(f"x2vlm-shards demo-tokenizer: --corpus {args.corpus}: no annotations/ folder (write the corpus with "
              f"x2vlm-shards demo)", file=sys.stderr)
        return 2
    build_demo_tokenizer(args.corpus, args.out, args.vocab_size)
    print(f"tokenizer written to {args.out}")
    return 0
