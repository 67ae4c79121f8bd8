"""Crash-safe checkpoints around DeepSpeed's `save_checkpoint` / `load_checkpoint`.

Layout under ROOT:
  step_00000020/                DeepSpeed's files for that tag, plus
    trainer_state_rank00000.pt  each rank's own state (data stream, RNG, step, epoch)
    COMPLETE                    JSON written by rank 0 after every rank finished (the commit)
  step_00000020_universal/      a universal copy, made on demand when the world size changes
  latest                        the tag of the newest complete checkpoint (for people; resume
                                decides by COMPLETE markers, never by this file)

Why our own marker: DeepSpeed's rank 0 writes its `latest` file before the final barrier, so a
job killed during a save can leave `latest` naming a half-written folder, and under ZeRO-1/2
only rank 0's `client_state` is written, so per-rank state goes in files of our own.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

RUN_CONFIG_FILE = "run_config.yaml"
TAG_PATTERN = re.compile(r"^step_(\d{8})$")
MARKER = "COMPLETE"
UNIVERSAL_SUFFIX = "_universal"
# ds_to_universal refuses a checkpoint without this client state entry.
UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.4}}


CRASH_ENV = "X2VLM_CRASH_AT"


def crash_point(name: str, step: int, rank: int) -> None:
    """Crash-consistency testing: X2VLM_CRASH_AT=NAME:STEP:RANK kills this process (SIGKILL,
    as the OOM killer or a node loss would) when the save of STEP on RANK reaches NAME."""
    wanted = os.environ.get(CRASH_ENV)
    if wanted and wanted == f"{name}:{step}:{rank}":
        os.kill(os.getpid(), signal.SIGKILL)


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rank_state_name(rank: int) -> str:
    return f"trainer_state_rank{rank:05d}.pt"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    world_size: int
    fingerprint: str

    @property
    def tag(self) -> str:
        return self.path.name


def read_marker(path: Path) -> CheckpointInfo | None:
    marker = path / MARKER
    try:
        meta = json.loads(marker.read_text())
        return CheckpointInfo(path, int(meta["step"]), int(meta["world_size"]), str(meta["fingerprint"]))
    except (OSError, ValueError, KeyError):
        return None


def _fsync_tree(path: Path) -> None:
    for item in sorted(path.rglob("*")):
        if item.is_file():
            with open(item, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def complete_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Every committed checkpoint under ROOT, oldest first."""
    found = []
    if root.is_dir():
        for child in root.iterdir():
            if TAG_PATTERN.match(child.name):
                info = read_marker(child)
                if info is not None:
                    found.append(info)
    return sorted(found, key=lambda i: i.step)


def retained_steps(steps: list[int], keep_last: int, keep_every: int | None) -> set[int]:
    keep = set(sorted(steps)[-keep_last:]) if keep_last > 0 else set()
    if keep_every:
        keep |= {s for s in steps if s % keep_every == 0}
    return keep


class CheckpointManager:
    def __init__(self, root: Path, rank: int, world_size: int, barrier: Callable[[], None],
                 keep_last: int = 3, keep_every: int | None = None):
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.rank = rank
        self.world_size = world_size
        self.barrier = barrier
        self.keep_last = keep_last
        self.keep_every = keep_every

    # -- saving -----------------------------------------------------------------------------
    def save(self, engine, step: int, trainer_state: dict, fingerprint: str, files: dict[str, str] | None = None) -> Path:
        """Writes a checkpoint of every rank; FILES (name -> text) are written by rank 0 beside it
        (the resolved run config, so that export needs nothing else)."""
        tag = tag_for(step)
        path = self.root / tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if path.exists():  # left by a save that was killed, or by a run that was rewound
                shutil.rmtree(path)
        self.barrier()
        crash_point("engine_save", step, self.rank)
        engine.save_checkpoint(str(self.root), tag=tag, client_state=dict(UNIVERSAL_INFO), save_latest=False)
        crash_point("rank_state", step, self.rank)
        torch.save(trainer_state, path / rank_state_name(self.rank))
        self.barrier()
        if self.rank == 0:
            for name, text in (files or {}).items():
                (path / name).write_text(text, encoding="utf-8")
            _fsync_tree(path)
            crash_point("marker", step, self.rank)
            meta = {"step": step, "world_size": self.world_size, "fingerprint": fingerprint, "time": time.time()}
            write_atomically(path / MARKER, json.dumps(meta))
            crash_point("latest", step, self.rank)
            write_atomically(self.root / "latest", tag)
            crash_point("prune", step, self.rank)
            self._prune()
        self.barrier()
        return path

    def _prune(self) -> None:
        complete = complete_checkpoints(self.root)
        keep = retained_steps([c.step for c in complete], self.keep_last, self.keep_every)
        newest = complete[-1].step if complete else -1
        for child in self.root.iterdir():
            name = child.name.removesuffix(UNIVERSAL_SUFFIX)
            match = TAG_PATTERN.match(name)
            if not match or not child.is_dir():
                continue
            step = int(match.group(1))
            committed = read_marker(self.root / name) is not None
            stale_partial = not committed and step < newest
            if (committed and step not in keep) or stale_partial:
                shutil.rmtree(child, ignore_errors=True)

    # -- resuming -----------------------------------------------------------------------------
    def resolve(self, resume: str | None) -> CheckpointInfo | None:
        """'auto': the newest complete checkpoint under ROOT, or None; 'none'/None: start fresh;
        otherwise a checkpoint folder, which must be complete."""
        if resume in (None, "none"):
            return None
        if resume == "auto":
            complete = complete_checkpoints(self.root)
            return complete[-1] if complete else None
        info = read_marker(Path(resume))
        if info is None:
            raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder (no readable {MARKER} marker)")
        return info

    def universal_copy(self, info: CheckpointInfo) -> Path:
        """A universal checkpoint of INFO, converted once by rank 0, for loading at a new world size."""
        target_root = info.path.with_name(info.tag + UNIVERSAL_SUFFIX)
        done = target_root / MARKER
        if self.rank == 0 and not done.exists():
            if target_root.exists():
                shutil.rmtree(target_root)
            command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                       "--input_folder", str(info.path), "--output_folder", str(target_root / info.tag),
                       "--num_extract_workers", "1", "--num_merge_workers", "1"]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"converting {info.path} to a universal checkpoint failed:\n{result.stderr[-4000:]}")
            write_atomically(done, (info.path / MARKER).read_text())
        self.barrier()
        return target_root

    def load(self, engine, info: CheckpointInfo, universal: bool) -> tuple[dict | None, list[dict]]:
        """Loads model, optimizer and scheduler into ENGINE; returns this rank's trainer state
        (None when the world size changed) and every saved rank's trainer state."""
        if universal:
            load_dir = self.universal_copy(info)
        else:
            load_dir = info.path.parent
        loaded, _ = engine.load_checkpoint(str(load_dir), tag=info.tag, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {info.path}")
        states = [torch.load(info.path / rank_state_name(r), weights_only=False) for r in range(info.world_size)]
        own = states[self.rank] if info.world_size == self.world_size else None
        return own, states
