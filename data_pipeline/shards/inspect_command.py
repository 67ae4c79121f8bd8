"""`x2vlm-shards inspect`: counts per source and a few samples as text."""
from __future__ import annotations

import argparse
import json
import sys
import tarfile

from .shard_reader import SpecError, expand_spec, iter_samples, media_member


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="count samples, captions and regions per source and print a few samples",
        description="Read every shard of SPEC (a directory, a brace pattern such as 'out/demo-{000000..000009}.tar', "
                    "or a glob) and print sample, caption and region counts per source, then the first samples "
                    "as text. With --json, print one JSON object with the totals instead.")
    parser.add_argument("spec", metavar="SPEC", help="shards: directory, brace pattern or glob")
    parser.add_argument("--json", action="store_true", help="print only the totals as one JSON object")
    parser.add_argument("--samples", type=int, default=3, metavar="N", help="samples to print (default 3)")
    parser.set_defaults(run=run)


def _empty() -> dict:
    return {"samples": 0, "captions": 0, "regions": 0}


def _describe(key: str, members: dict[str, bytes], meta: dict) -> str:
    extension, data = media_member(members) or ("?", b"")
    lines = [f"{key}  {extension} {len(data)} bytes  {meta.get('width')}x{meta.get('height')}  source={meta.get('source')}"]
    lines += [f"  caption: {c}" for c in meta.get("captions", [])]
    for region in meta.get("regions", []):
        box = ", ".join(f"{v:g}" for v in region["box"])
        text = " | ".join(region.get("captions") or []) or region.get("label")
        lines.append(f"  region [{box}]: {text}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        paths = expand_spec(args.spec)
    except SpecError as error:
        print(f"x2vlm-shards inspect: error: {error}", file=sys.stderr)
        return 2
    totals = {"shards": len(paths), **_empty(), "sources": {}}
    shown = []
    for path in paths:
        try:
            for key, members in iter_samples(path):
                meta = json.loads(members["json"])
                source = totals["sources"].setdefault(meta.get("source", "?"), _empty())
                for counts in (totals, source):
                    counts["samples"] += 1
                    counts["captions"] += len(meta.get("captions", []))
                    counts["regions"] += len(meta.get("regions", []))
                if len(shown) < args.samples:
                    shown.append(_describe(key, members, meta))
        except (tarfile.TarError, KeyError, ValueError, OSError) as error:
            print(f"x2vlm-shards inspect: error: {path} is not a readable shard ({type(error).__name__}: {error}); "
                  "run x2vlm-shards verify", file=sys.stderr)
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
