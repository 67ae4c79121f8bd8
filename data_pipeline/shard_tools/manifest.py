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
    path = directory / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
