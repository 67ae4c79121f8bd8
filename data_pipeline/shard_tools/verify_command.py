"""`x2vlm-shards verify`: re-reads every shard; checks this project's builds against their
manifest.json, and any shard (img2dataset / video2dataset too) for its structure."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..io.shard_list import ShardListError, brace_expand, expand_shards, is_remote
from ..io.shard_reader import ShardDamaged, checked_samples
from ..schema import media_extension, parse_meta
from ..skips import BadSample
from .manifest import load_manifest
from ..io.digest import file_sha256

# The json fields this project's builds write (schema.image_info / video_info).
REQUIRED_FIELDS = ("source", "width", "height", "captions", "regions")


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="re-read every shard, check counts and hashes against the manifest",
        description="Re-read every shard of SPEC (a directory, brace pattern, glob or URL): the tar must be whole and "
                    "each sample must have one media member and a caption (txt, or the json's captions / caption) "
                    "or a region. Where a manifest.json lies beside the shards (this project's builds), each "
                    "shard's sample count, size and sha256 must match it, each json must hold source, width, "
                    "height, captions and regions, and with a directory SPEC every shard it lists must exist; "
                    "shards without a manifest (img2dataset, video2dataset) are checked for structure only. "
                    "Prints each corrupt shard with the reason and exits 1 if there is any.")
    parser.add_argument("spec", metavar="SPEC", help="shards: directory, brace pattern, glob or URL")
    parser.set_defaults(run=run)


def sample_problem(sample: dict, built_here: bool) -> str | None:
    """Why the sample is not a usable one, or None."""
    key = sample["__key__"]
    members = sorted(k for k in sample if not k.startswith("__"))
    if media_extension(sample) is None:
        return f"sample {key} has no media member (members: {', '.join(members)})"
    if built_here:
        if "json" not in sample:
            return f"sample {key} has no json member"
        try:
            info = json.loads(sample["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            return f"sample {key}: bad json member ({type(error).__name__}: {error})"
        missing = [f for f in REQUIRED_FIELDS if not isinstance(info, dict) or f not in info]
        if missing:
            return f"sample {key}: json lacks {', '.join(missing)}"
    try:
        meta = parse_meta(sample)
    except BadSample as bad:
        return f"sample {key}: {bad}"
    if not meta.captions and not meta.regions:
        return f"sample {key} has no caption or region"
    return None


def shard_problem(url: str, expected: dict | None) -> str | None:
    """Why the shard is corrupt, or None. `expected` is its manifest entry, if it has one."""
    if expected is not None:
        size = Path(url).stat().st_size
        if size != expected["bytes"]:
            return f"{size} bytes, the manifest says {expected['bytes']}"
        if file_sha256(Path(url)) != expected["sha256"]:
            return "sha256 differs from the manifest"
    count = 0
    try:
        for sample in checked_samples(url):
            problem = sample_problem(sample, expected is not None)
            if problem:
                return problem
            count += 1
    except ShardDamaged as error:
        return f"unreadable tar ({error})"
    if expected is not None and count != expected["samples"]:
        return f"{count} samples, the manifest says {expected['samples']}"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        urls = expand_shards([args.spec], where="SPEC")
    except ShardListError as error:
        print(f"x2vlm-shards verify: error: {error}", file=sys.stderr)
        return 2
    local = [Path(u) for u in urls if not is_remote(u)]
    manifests = {}
    problems = {}
    for directory in sorted({p.parent for p in local}):
        try:
            manifest = load_manifest(directory)
        except (OSError, ValueError) as error:
            problems[str(directory / "manifest.json")] = f"unreadable manifest ({type(error).__name__}: {error})"
            manifest = None
        manifests[directory] = {s["name"]: s for s in manifest["shards"]} if manifest else None
        if manifest is None:
            print(f"no manifest.json in {directory}: checking the shards' structure only")
        elif any(Path(part) == directory for part in brace_expand(args.spec)):
            # A directory SPEC claims the whole build: every listed shard must be there.
            for name in manifests[directory]:
                if not (directory / name).is_file():
                    problems[str(directory / name)] = "listed in manifest.json but missing"
    for url in urls:
        listed = None if is_remote(url) else manifests[Path(url).parent]
        name = Path(url).name
        if listed is not None and name not in listed:
            problems[url] = "not listed in manifest.json"
            continue
        problem = shard_problem(url, listed[name] if listed is not None else None)
        if problem:
            problems[url] = problem
    for name, problem in sorted(problems.items()):
        print(f"CORRUPT {name}: {problem}")
    good = len(urls) - sum(1 for u in urls if u in problems)
    print(f"{good} of {len(urls)} shards good" + (f", {len(problems)} problems" if problems else ""))
    return 1 if problems else 0
