"""`x2vlm-shards inspect`: counts per source and a few samples as text."""
from __future__ import annotations

import argparse
import json
import sys

from ..io.shard_list import ShardListError, expand_shards
from ..io.shard_reader import ShardDamaged, checked_samples
from ..schema import SampleMeta, media_extension, parse_meta
from ..skips import BadSample

NO_SOURCE = "(no source)"  # img2dataset / video2dataset shards do not name one


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="count samples, captions and regions per source and print a few samples",
        description="Read every shard of SPEC (a directory, a brace pattern such as 'out/demo-{000000..000009}.tar', "
                    "a glob or a URL; this project's shards or img2dataset / video2dataset ones) and print sample, "
                    "caption and region counts per source, then the first samples as text. With --json, print one "
                    "JSON object with the totals instead. A damaged shard is named and the exit code is 1.")
    parser.add_argument("spec", metavar="SPEC", help="shards: directory, brace pattern, glob or URL")
    parser.add_argument("--json", action="store_true", help="print only the totals as one JSON object")
    parser.add_argument("--samples", type=int, default=3, metavar="N", help="samples to print (default 3)")
    parser.set_defaults(run=run)


def _empty() -> dict:
    return {"samples": 0, "captions": 0, "regions": 0}


def source_of(meta: SampleMeta) -> str:
    source = meta.info.get("source")
    return source if isinstance(source, str) and source else NO_SOURCE


def _describe(sample: dict, meta: SampleMeta) -> str:
    extension = media_extension(sample) or "?"
    data = sample.get(extension, b"")
    info = meta.info
    lines = [f"{meta.key}  {extension} {len(data)} bytes  {info.get('width')}x{info.get('height')}  "
             f"source={source_of(meta)}"]
    lines += [f"  caption: {c}" for c in meta.captions]
    for region in meta.regions:
        box = ", ".join(f"{v:g}" for v in region.box)
        lines.append(f"  region [{box}]: {' | '.join(region.texts)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        urls = expand_shards([args.spec], where="SPEC")
    except ShardListError as error:
        print(f"x2vlm-shards inspect: error: {error}", file=sys.stderr)
        return 2
    totals = {"shards": len(urls), **_empty(), "sources": {}}
    shown = []
    for url in urls:
        try:
            for sample in checked_samples(url):
                try:
                    meta = parse_meta(sample)
                except BadSample as bad:
                    raise ShardDamaged(bad.reason, f"sample {sample['__key__']}: {bad}") from None
                source = totals["sources"].setdefault(source_of(meta), _empty())
                for counts in (totals, source):
                    counts["samples"] += 1
                    counts["captions"] += len(meta.captions)
                    counts["regions"] += len(meta.regions)
                if len(shown) < args.samples:
                    shown.append(_describe(sample, meta))
        except ShardDamaged as error:
            print(f"x2vlm-shards inspect: error: {url} is not a readable shard ({error}); run x2vlm-shards verify",
                  file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(totals, sort_keys=True))
        return 0
    print(f"{totals['shards']} shards, {totals['samples']} samples, {totals['captions']} captions, {totals['regions']} regions")
    for name, counts in sorted(totals["sources"].items()):
        print(f"  {name}: {counts['samples']} samples, {counts['captions']} captions, {counts['regions']} regions")
    for text in shown:
        print()
        print(text)
    return 0
