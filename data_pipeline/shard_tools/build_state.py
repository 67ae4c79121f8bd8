"""What survives an interrupted build: in OUTPUT/.build, the fingerprint of the build and
one record per finished shard. A shard counts as finished when its record and its tar
both exist; the record is written before the tar is renamed into place."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

STATE_DIR = ".build"


class BuildStateError(Exception):
    """The output directory holds a build that this command must not touch or continue."""


def write_json_atomic(path: Path, payload, indent: int | None = 1) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(payload, indent=indent, ensure_ascii=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


class BuildState:
    def __init__(self, output: Path, build_fingerprint: str):
        self.output = output
        self.directory = output / STATE_DIR
        self.fingerprint = build_fingerprint

    def open(self, resume: bool, prefix: str) -> None:
        """Starts a fresh build or, with `resume`, takes up the one there; refuses to mix builds."""
        marker = self.directory / "build.json"
        existing = json.loads(marker.read_text())["fingerprint"] if marker.is_file() else None
        if existing is not None and existing != self.fingerprint:
            raise BuildStateError(f"{self.output} holds a build with other annotation files or options; "
                                  "use an empty --output directory (or rerun the original command with --resume)")
        if existing is not None and not resume:
            raise BuildStateError(f"{self.output} already holds this build; pass --resume to continue it, "
                                  "or use an empty --output directory")
        if existing is None and any(self.output.glob(f"{prefix}-*.tar")):
            raise BuildStateError(f"{self.output} already holds {prefix}-*.tar shards from another build; "
                                  "use an empty --output directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        for partial in list(self.output.glob(".*.partial")) + list(self.directory.glob(".*.partial")):
            partial.unlink()  # left by a killed build; never a finished shard
        if existing is None:
            write_json_atomic(marker, {"fingerprint": self.fingerprint})

    def record_path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def finished(self, name: str) -> dict | None:
        record = self.record_path(name)
        if record.is_file() and (self.output / name).is_file():
            return json.loads(record.read_text(encoding="utf-8"))
        return None

    def save(self, record: dict) -> None:
        write_json_atomic(self.record_path(record["name"]), record, indent=None)
