"""manifest.json and rejected.jsonl: what a build produced, and what it left out and why."""
from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

from .build_state import write_json_atomic

MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"
SHARD_FIELDS = ("name", "samples", "captions", "regions", "bytes", "sha256")


def project_version() -> str:
    return importlib.metadata.version("x2vlm-pretrain")


def build_manifest(command: str, settings: dict, inputs: list[dict], source: str, shard_records: list[dict],
                   rejected_count: int) -> dict:
    shards = [{field: record[field] for field in SHARD_FIELDS} for record in shard_records]
    totals = {"shards": len(shards), "rejected": rejected_count,
              **{field: sum(s[field] for s in shards) for field in ("samples", "captions", "regions", "bytes")}}
    return {
        "version": project_version(),
        "command": command,
        "settings": settings,
        "inputs": inputs,
        "totals": totals,
        "sources": {source: {field: totals[field] for field in ("samples", "captions", "regions")}},
        "shards": shards,
    }


def write_manifest(output: Path, manifest: dict) -> None:
    write_json_atomic(output / MANIFEST, manifest)


def write_rejected(output: Path, rejected: list[dict]) -> None:
    temporary = output / f".{REJECTED}.partial"
    with open(temporary, "w", encoding="utf-8") as f:
        for entry in rejected:
            f.write(json.dumps(entry, ensure_ascii=True) + "\n")
    os.replace(temporary, output / REJECTED)


def load_manifest(directory: Path) -> dict | None:
    """DIRECTORY's manifest, None where there is none; a ValueError naming what is wrong where it
    is not one this project writes (its shard entries are what verify compares against)."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list):
        raise ValueError("no 'shards' list")
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("sha256"), str) \
                or not all(isinstance(entry.get(f), int) and not isinstance(entry.get(f), bool) and entry[f] >= 0
                           for f in ("samples", "bytes")):
            raise ValueError(f"shards[{i}] is not a {{name, samples, bytes, sha256}} entry")
    return manifest
