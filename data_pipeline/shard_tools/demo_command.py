"""`x2vlm-shards demo`: writes the synthetic demo corpus."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_pipeline.demo_corpus import DemoCorpusSpec, generate
from data_pipeline.demo_corpus.generate import parse_languages


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="write the synthetic demo corpus (raw images, videos and annotation files)",
        description=(
            "Write a synthetic corpus of coloured shapes as raw files in the formats public corpora "
            "ship in: JPEG images, H.264 MP4 videos, COCO captions and instances, Visual Genome "
            "regions, RefCOCO refs, generic JSONL / CSV and a video JSONL list, split into train "
            "and eval. The output is a pure function of the seed. Texts are in English unless "
            "--languages says otherwise."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (created if absent)")
    parser.add_argument("--images", type=int, default=600, help="number of images")
    parser.add_argument("--videos", type=int, default=60, help="number of videos")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--eval-fraction", type=float, default=0.1, help="fraction of images and videos in the eval split")
    parser.add_argument("--languages", default="en", metavar="SHARES",
                        help="language of each image's and video's texts: en, zh, en+zh (both), or shares drawn "
                             "per item, e.g. en=0.4,zh=0.3,en+zh=0.3; Chinese uses a fixed hand-written vocabulary")
    parser.add_argument("--eval-languages", default=None, metavar="SHARES",
                        help="the same for the eval split (default: as --languages), e.g. zh for Chinese queries")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.images < 0 or args.videos < 0:
        print("x2vlm-shards demo: --images and --videos must be >= 0", file=sys.stderr)
        return 2
    if not 0.0 <= args.eval_fraction < 1.0:
        print(f"x2vlm-shards demo: --eval-fraction must be in [0, 1), got {args.eval_fraction}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"x2vlm-shards demo: --out {args.out} exists and is not a directory", file=sys.stderr)
        return 2
    try:
        languages = parse_languages(args.languages, "--languages")
        eval_languages = None if args.eval_languages is None else parse_languages(args.eval_languages, "--eval-languages")
    except ValueError as error:
        print(f"x2vlm-shards demo: {error}", file=sys.stderr)
        return 2
    spec = DemoCorpusSpec(args.out, args.images, args.videos, args.seed, args.eval_fraction, languages, eval_languages)
    summary = generate(spec, progress=not args.quiet)
    print(f"demo corpus written to {args.out}: " + json.dumps({k: summary[k] for k in ("images", "videos", "regions", "captions")}))
    return 0
