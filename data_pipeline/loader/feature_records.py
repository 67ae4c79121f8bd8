"""The trained samples' features, on disk in the run folder: written by the trainer, read by
the loader's grouping (grouping.py). The one format, its writer and its reader.

Layout: ROOT/<corpus>/epoch<E>.rank<R>.bin, one file per corpus, corpus epoch and rank,
appended to by that rank only. A file is a sequence of records:

    magic b"XFR1" | step u32 | key length u16 | width u16 | key (utf-8) | width x float16

`step` is the loader's step (batches drawn, micro-steps) that trained the sample. Records of
a file are in step order. The reader stops at the first record that is cut short (a crash
while writing) or does not parse (damage), so it ends on any input; what it read before
stays valid.

Resume: the trainer keeps each of its files' sizes in its checkpoint state; `restore`
truncates a file to its size then and removes files made after it, so that records written
between the checkpoint and a crash are not seen twice (and the reader's step bound keeps a
snapshot independent of them anyway).
"""
from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"XFR1"
HEADER = struct.Struct("<4sIHH")
MAX_KEY_BYTES = 4096
MAX_WIDTH = 4096
_NAME = re.compile(r"^epoch(\d{1,9})\.rank(\d{1,9})\.bin$")


def file_name(epoch: int, rank: int) -> str:
    return f"epoch{epoch:05d}.rank{rank:05d}.bin"


def parse_name(name: str) -> tuple[int, int] | None:
    """(epoch, rank) of a record file's name; None for any other file."""
    match = _NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def encode(step: int, key: str, vector: np.ndarray) -> bytes:
    key_bytes = key.encode("utf-8")[:MAX_KEY_BYTES]
    vector = np.ascontiguousarray(vector, dtype="<f2")
    return HEADER.pack(MAGIC, step, len(key_bytes), vector.shape[0]) + key_bytes + vector.tobytes()


def read_records(path: Path, max_step: int | None = None, offset: int = 0, stop: list | None = None):
    """(step, key, float16 vector) of a file's records from byte OFFSET on, in order, up to the
    first with a step above MAX_STEP, cut short or damaged. STOP, when given, receives where the
    reading stopped: the byte offset to go on from once the file has grown, or None after damage."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError as error:
        log.warning("feature records %s: cannot read (%s); its samples are grouped as unrecorded", path,
                    error.strerror)
        data = b""
    position, damaged = 0, False
    try:
        while position + HEADER.size <= len(data):
            magic, step, key_length, width = HEADER.unpack_from(data, position)
            end = position + HEADER.size + key_length + 2 * width
            if magic != MAGIC or key_length > MAX_KEY_BYTES or not 0 < width <= MAX_WIDTH:
                log.warning("feature records %s: damaged at byte %d; the records before it are used", path,
                            offset + position)
                damaged = True
                return
            if end > len(data) or (max_step is not None and step > max_step):
                return
            start = position + HEADER.size
            key = data[start:start + key_length].decode("utf-8", "replace")
            yield step, key, np.frombuffer(data, dtype="<f2", count=width, offset=start + key_length)
            position = end
    finally:
        if stop is not None:
            stop.append(None if damaged else offset + position)


def record_files(root: Path, corpus: str) -> list[tuple[int, int, Path]]:
    """(epoch, rank, path) of a corpus's record files, by epoch then rank."""
    folder = Path(root) / corpus
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        parsed = parse_name(path.name)
        if parsed is not None and path.is_file():
            found.append((*parsed, path))
    return sorted(found)


class FeatureSnapshot:
    """{sample key: float16 vector} of a corpus's records of steps <= a bound that only grows: the
    latest record of a key wins (ties, within one step: the later epoch, then rank). Each
    `advance` reads only what was appended since the last one, from where it stopped in each
    file; the result is the same as one reading of everything up to the bound."""

    def __init__(self, root: Path, corpus: str):
        self.root, self.corpus = Path(root), corpus
        self.vectors: dict[str, np.ndarray] = {}
        self.steps: dict[str, int] = {}
        self.offsets: dict[Path, int | None] = {}  # None: damaged, not read again
        self.bound = 0

    def advance(self, max_step: int) -> dict[str, np.ndarray]:
        if max_step < self.bound:
            raise ValueError(f"feature records of corpus {self.corpus}: the step bound went back from "
                             f"{self.bound} to {max_step}")
        self.bound = max_step
        vectors, steps = self.vectors, self.steps
        for _, _, path in record_files(self.root, self.corpus):
            offset = self.offsets.get(path, 0)
            if offset is None:
                continue
            stop: list = []
            for step, key, vector in read_records(path, max_step, offset, stop):
                if step >= steps.get(key, -1):
                    steps[key] = step
                    vectors[key] = vector
            self.offsets[path] = stop[0]
        return vectors


def read_features(root: Path, corpus: str, max_step: int) -> dict[str, np.ndarray]:
    """FeatureSnapshot's vectors of the records of steps <= MAX_STEP, read at once."""
    return FeatureSnapshot(root, corpus).advance(max_step)


class FeatureRecordWriter:
    """One rank's appender. `append` writes through to the OS (flushed): another rank reads the
    files at the loader's next refresh, two steps later at the least (see mixer.py)."""

    def __init__(self, root: Path, rank: int, world_size: int):
        self.root, self.rank, self.world_size = Path(root), rank, world_size
        self.files: dict[tuple[str, int], object] = {}

    def path(self, corpus: str, epoch: int) -> Path:
        return self.root / corpus / file_name(epoch, self.rank)

    def append(self, corpus: str, epoch: int, step: int, keys: list[str], vectors: np.ndarray) -> None:
        handle = self.files.get((corpus, epoch))
        if handle is None:
            path = self.path(corpus, epoch)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.files[(corpus, epoch)] = open(path, "ab")
        handle.write(b"".join(encode(step, key, vector) for key, vector in zip(keys, vectors)))

    def flush(self) -> None:
        for handle in self.files.values():
            handle.flush()

    def sizes(self) -> dict[str, int]:
        """{path relative to the root: size} of the files this rank answers for (its own and, after a
        change of world size, those of the old ranks r with r % world_size == rank), its own
        flushed and synced to disk: the part of the run's state a checkpoint keeps."""
        sizes = {}
        for handle in self.files.values():
            handle.flush()
            os.fsync(handle.fileno())
        for corpus_dir in sorted(p for p in self.root.glob("*") if p.is_dir()):
            for path in sorted(corpus_dir.iterdir()):
                parsed = parse_name(path.name)
                if parsed is not None and parsed[1] % self.world_size == self.rank:
                    sizes[f"{corpus_dir.name}/{path.name}"] = path.stat().st_size
        return sizes

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        self.files = {}


def restore(root: Path, sizes: dict[str, int], rank: int, world_size: int) -> list[str]:
    """Brings the record files of the ranks this rank answers for (old rank % WORLD_SIZE == RANK)
    back to the checkpoint's SIZES (the union of the saving ranks'): truncated to their size then,
    removed when made after it. Returns notes on files shorter than recorded (lost writes)."""
    root = Path(root)
    notes = []
    if not root.is_dir():
        return notes
    for corpus_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(corpus_dir.iterdir()):
            parsed = parse_name(path.name)
            if parsed is None or parsed[1] % world_size != rank:
                continue
            name = f"{corpus_dir.name}/{path.name}"
            size = path.stat().st_size
            if name not in sizes:
                path.unlink()
            elif size > sizes[name]:
                os.truncate(path, sizes[name])
            elif size < sizes[name]:
                notes.append(f"{path}: {size} bytes, the checkpoint recorded {sizes[name]}; the lost records' "
                             f"samples are grouped as unrecorded")
    return notes
