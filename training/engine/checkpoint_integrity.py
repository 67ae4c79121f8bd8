"""Checksums of checkpoint files: written while each file is written, verified before a
checkpoint is trusted.

Every file of a checkpoint is hashed (sha256) as its bytes go to disk, so a save reads
nothing back; the COMPLETE marker lists the size and hash of every file. A checkpoint is
trusted when each listed file has its size and hash, no unlisted file lies beside them
(DeepSpeed's loaders pick files by name pattern), and each `.pt` file unpickles
weights-only (training/safe_load.py), which catches a file rewritten together with its
marker before any state is loaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from data_pipeline.io.digest import file_sha256
from training.runtime import safe_load
from training.runtime.safe_load import short_error


class HashingWriter:
    """A write-only file object that hashes what passes through it (torch.save writes
    sequentially, so the hash is that of the file)."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        written = self.file.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return written

    def flush(self) -> None:
        self.file.flush()

    def record(self) -> dict:
        return {"size": self.size, "sha256": self.sha256.hexdigest()}


def write_hashed(path: Path, write: Callable[[HashingWriter], None]) -> dict:
    """Writes PATH through WRITE and syncs it to disk; returns its {"size", "sha256"}. A write
    that fails removes its partial file and raises."""
    try:
        with open(path, "wb") as f:
            writer = HashingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return writer.record()


def save_hashed(obj, path: Path, zipfile_serialization: bool = True) -> dict:
    return write_hashed(Path(path), lambda w: torch.save(obj, w, _use_new_zipfile_serialization=zipfile_serialization))


def hash_file(path: Path) -> dict:
    return {"size": Path(path).stat().st_size, "sha256": file_sha256(path)}


class SaveLog:
    """What one rank wrote for one checkpoint: {relative name: record}, and the first write
    that failed (path, error), if any."""

    def __init__(self, folder: Path, before_write: Callable[[Path], None] = lambda path: None):
        self.folder = Path(folder)
        self.before_write = before_write
        self.records: dict[str, dict] = {}
        self.failure: tuple[Path, OSError] | None = None

    def name_of(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.folder.resolve()).as_posix()

    def fail(self, path: Path, error: OSError) -> None:
        if self.failure is None:
            self.failure = (Path(path), error)

    def write(self, path: Path, obj, zipfile_serialization: bool = True) -> None:
        """Saves OBJ to PATH (inside the folder) and records it; an OSError is recorded, not
        raised, and once one happened nothing more is written."""
        if self.failure is not None:
            return
        path = Path(path)

        def write(writer: HashingWriter) -> None:
            self.before_write(path)  # failure injection for tests, once the file exists
            torch.save(obj, writer, _use_new_zipfile_serialization=zipfile_serialization)
        try:
            self.records[self.name_of(path)] = write_hashed(path, write)
        except OSError as error:
            self.fail(path, error)

    def describe_failure(self) -> str | None:
        if self.failure is None:
            return None
        path, error = self.failure
        return f"{path}: {error.strerror or error}" if isinstance(error, OSError) else f"{path}: {error}"


class RecordingCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch.save checkpoint engine, writing through the current SaveLog: each file
    is hashed as it is written, and a failed write (disk full, permissions) is recorded
    instead of raised, so that this rank keeps pace with the collectives inside
    `save_checkpoint` and the ranks agree on the failure afterwards."""

    def __init__(self, config_params=None):
        super().__init__(config_params)
        self.log: SaveLog | None = None

    def save(self, state_dict, path: str) -> None:
        if self.log is None:  # a save outside the checkpoint manager
            save_hashed(state_dict, Path(path), self.zipfile_serialization)
        else:
            self.log.write(Path(path), state_dict, self.zipfile_serialization)

    def makedirs(self, path, exist_ok=False) -> None:
        try:
            super().makedirs(path, exist_ok=exist_ok)
        except OSError as error:
            if self.log is None:
                raise
            self.log.fail(Path(path), error)


def install_recording_engine(engine) -> RecordingCheckpointEngine:
    """Replaces ENGINE's checkpoint engine by a recording one. DeepSpeed's rank 0 also copies
    its zero_to_fp32 scripts beside the checkpoints; a failure there is recorded too."""
    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise ValueError(f"the DeepSpeed config selects the checkpoint engine {type(current).__name__}; this trainer "
                         f"writes checkpoints through DeepSpeed's torch engine only (it hashes each file as it writes "
                         f"it): remove the 'checkpoint' writer / datastates settings from the DeepSpeed config")
    recording = RecordingCheckpointEngine(engine._config)
    engine.checkpoint_engine = recording
    copy_scripts = engine._copy_recovery_script

    def copy_recovery_script(save_path):
        try:
            copy_scripts(save_path)
        except OSError as error:
            if recording.log is None:
                raise
            recording.log.fail(Path(save_path), error)

    engine._copy_recovery_script = copy_recovery_script
    return recording


def safe_relative(folder: Path, name: str) -> Path | None:
    """FOLDER/NAME for a manifest name that stays inside FOLDER, else None."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or not pure.parts or any(part in ("", ".", "..") for part in pure.parts):
        return None
    return Path(folder).joinpath(*pure.parts)


def files_under(folder: Path, exclude: set[str]) -> list[str]:
    """Every file under FOLDER as a relative POSIX name, but EXCLUDE."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() not in exclude)


def verify_file(folder: Path, name: str, record: dict) -> str | None:
    """None when FOLDER/NAME has the recorded size and sha256 and, for a .pt file, unpickles
    weights-only; else what is wrong, naming the file."""
    path = safe_relative(folder, name)
    if path is None:
        return f"{folder}: the marker lists {name!r}, a path outside the checkpoint"
    if path.is_symlink() or not path.is_file():
        return f"{path}: missing" if not path.is_symlink() else f"{path}: a symbolic link"
    try:
        found = hash_file(path)
    except OSError as error:
        return f"{path}: unreadable ({error.strerror or error})"
    if found["size"] != record.get("size"):
        return f"{path}: {found['size']} bytes, the marker says {record.get('size')} (truncated or overwritten)"
    if found["sha256"] != record.get("sha256"):
        return f"{path}: sha256 {found['sha256'][:12]}... differs from the marker's {str(record.get('sha256'))[:12]}... (corrupted)"
    if path.suffix == ".pt":
        try:
            # mmap: the pickle is read and checked in full, the tensor bytes are not loaded.
            safe_load.load(path, mmap=zipfile.is_zipfile(path))
        except Exception as error:  # any refusal or unpickling failure disqualifies the file
            return f"{path}: refused to load weights-only: {short_error(error)}"
    return None


def verify_files(folder: Path, manifest: dict, names: list[str]) -> list[str]:
    return [problem for name in names if (problem := verify_file(folder, name, manifest[name])) is not None]


def unlisted_files(folder: Path, manifest: dict, exclude: set[str]) -> list[str]:
    return [f"{Path(folder) / name}: not listed in the marker (DeepSpeed could load it)"
            for name in files_under(folder, exclude) if name not in manifest]
