"""`x2vlm-shards verify`: re-reads every shard and checks it against manifest.json."""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

from braceexpand import braceexpand

from .manifest import load_manifest
from .shard_reader import SpecError, expand_spec, iter_samples, media_member
from .tar_writer import file_sha256

REQUIRED_FIELDS = ("source", "width", "height", "captions", "regions")


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="re-read every shard, check counts and hashes against the manifest",
        description="Re-read every shard of SPEC (a directory, brace pattern or glob): each sample must have one "
                    "media member and a json member with source, width, height, captions and regions. Where a "
                    "manifest.json lies beside the shards, each shard's sample count, size and sha256 must match it, "
                    "and with a directory SPEC every shard it lists must exist. Prints each corrupt shard with the "
                    "reason and exits 1 if there is any.")
    parser.add_argument("spec", metavar="SPEC", help="shards: directory, brace pattern or glob")
    parser.set_defaults(run=run)


def shard_problem(path: Path, expected: dict | None) -> str | None:
    """Why the shard is corrupt, or None."""
    if expected is not None:
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{size} bytes, the manifest says {expected['bytes']}"
        if file_sha256(path) != expected["sha256"]:
            return "sha256 differs from the manifest"
    count = 0
    try:
        for key, members in iter_samples(path):
            if media_member(members) is None:
                return f"sample {key} has no media member (members: {', '.join(sorted(members))})"
            if "json" not in members:
                return f"sample {key} has no json member"
            meta = json.loads(members["json"].decode("utf-8"))
            missing = [field for field in REQUIRED_FIELDS if field not in meta]
            if missing:
                return f"sample {key}: json lacks {', '.join(missing)}"
            count += 1
    except (tarfile.TarError, OSError, EOFError) as error:
        return f"unreadable tar ({type(error).__name__}: {error})"
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError
        return f"bad json member ({type(error).__name__}: {error})"
    if expected is not None and count != expected["samples"]:
        return f"{count} samples, the manifest says {expected['samples']}"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        paths = expand_spec(args.spec)
    except SpecError as error:
        print(f"x2vlm-shards verify: error: {error}", file=sys.stderr)
        return 2
    manifests = {}
    problems = {}
    for directory in sorted({p.parent for p in paths}):
        manifest = load_manifest(directory)
        manifests[directory] = {s["name"]: s for s in manifest["shards"]} if manifest else None
        if manifest is None:
            print(f"no manifest.json in {directory}: checking the shards' structure only")
        elif any(Path(part) == directory for part in braceexpand(args.spec)):
            # A directory SPEC claims the whole build: every listed shard must be there.
            for name in manifests[directory]:
                if not (directory / name).is_file():
                    problems[str(directory / name)] = "listed in manifest.json but missing"
    for path in paths:
        listed = manifests[path.parent]
        if listed is not None and path.name not in listed:
            problems[str(path)] = "not listed in manifest.json"
            continue
        problem = shard_problem(path, listed[path.name] if listed is not None else None)
        if problem:
            problems[str(path)] = problem
    for name, problem in sorted(problems.items()):
        print(f"CORRUPT {name}: {problem}")
    good = len(paths) - sum(1 for p in paths if str(p) in problems)
    print(f"{good} of {len(paths)} shards good" + (f", {len(problems)} problems" if problems else ""))
    return 1 if problems else 0
