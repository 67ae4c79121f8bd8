"""Helpers for the shard tests: run the CLI in-process and read shards back with webdataset."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import webdataset as wds

from data_pipeline.shards import main


def build(output: Path, fmt_and_files: list[tuple[str, Path]], media_root: Path, *extra: str) -> int:
    argv = ["build", "--media-root", str(media_root), "--output", str(output), "--quiet"]
    for fmt, path in fmt_and_files:
        argv += ["--format", fmt, "--annotations", str(path)]
    return main(argv + list(extra))


def read_back(output: Path) -> list[dict]:
    """Every sample of the build's shards, as webdataset yields them, with `json` parsed."""
    shards = sorted(str(p) for p in output.glob("*.tar"))
    samples = []
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        sample = dict(sample)
        sample["json"] = json.loads(sample["json"].decode("utf-8"))
        samples.append(sample)
    return samples


def shard_digests(output: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(output.glob("*.tar"))}


def rejected_lines(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "rejected.jsonl").read_text().splitlines()]


def load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))
