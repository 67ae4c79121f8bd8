"""Crash-safe, verified checkpoints around DeepSpeed's `save_checkpoint` / `load_checkpoint`.

Layout under ROOT:
  step_00000020/                DeepSpeed's files for that tag, plus
    trainer_state_rank00000.pt  each rank's own state: {name: state_dict()} of the stateful
                                objects given to the manager: the trainer's and each
                                extension's under its name (tensors and plain types only)
    run_config.yaml             the resolved run config (export needs nothing else)
    COMPLETE                    JSON written by rank 0 after every rank finished (the commit):
                                step, world size, config fingerprint, layout, and the size and
                                sha256 of every file above
  step_00000020_universal/      a universal copy, made on demand when the world size changes
  latest                        the tag of the newest complete checkpoint (for people; resume
                                decides by COMPLETE markers, never by this file)

Why our own marker: DeepSpeed's rank 0 writes its `latest` file before the final barrier, so a
job killed during a save can leave `latest` naming a half-written folder, and under ZeRO-1/2
only rank 0's `client_state` is written, so per-rank state goes in files of our own.

Saving and loading are one code path each way for every piece of state: the DeepSpeed
engine (model, optimizer, scheduler) and a dict of stateful objects (`state_dict()` /
`load_state_dict()`, and `load_resharded(states)` for a resume on another world size).
Every file is loaded weights-only (training/runtime/safe_load.py) and only after its checksum
verified (checkpoint_integrity.py); `--resume auto` falls back, checkpoint by checkpoint, to the
newest one that verifies.

Layouts: a checkpoint's marker names the layout its files follow (`LAYOUT`); one without is of
version 0.1.0, which kept every optional feature's state inside the trainer's and named the
model's parameters at the top of the module (`vision.*`, not `model.vision.*`). Loading maps
such a checkpoint onto today's names (`upgrade_rank_state`, and the task's own renaming of its
parameters, training/tasks/task.py); nothing is rewritten on disk.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from training.runtime import distributed, safe_load
from training.engine.checkpoint_integrity import (files_under, hash_file, install_recording_engine, SaveLog,
                                           unlisted_files, verify_files, write_hashed)

RUN_CONFIG_FILE = "run_config.yaml"
# 1: version 0.1.0 (no "layout" in the marker); 2: one state entry per extension, the model's
# parameters under the task's `model.`.
LAYOUT = 2
# Layout 1 kept these extensions' states inside the trainer's, under these keys.
LAYOUT_1_STATES = {"momentum": "momentum_distillation", "feature_records": "grouping_features"}
TAG_PATTERN = re.compile(r"^step_(\d{8})$")
MARKER = "COMPLETE"
UNIVERSAL_SUFFIX = "_universal"
# ds_to_universal refuses a checkpoint without this client state entry.
UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.4}}


CRASH_ENV = "X2VLM_CRASH_AT"
FAIL_ENV = "X2VLM_FAIL_AT"


def crash_point(name: str, step: int, rank: int) -> None:
    """Crash-consistency testing: X2VLM_CRASH_AT=NAME:STEP:RANK kills this process (SIGKILL,
    as the OOM killer or a node loss would) when the save of STEP on RANK reaches NAME."""
    wanted = os.environ.get(CRASH_ENV)
    if wanted and wanted == f"{name}:{step}:{rank}":
        os.kill(os.getpid(), signal.SIGKILL)


def failure_point(name: str, step: int, rank: int, path: Path) -> None:
    """Failed-write testing: X2VLM_FAIL_AT=NAME:STEP:RANK makes that write of the save of STEP
    on RANK fail as a full disk would (ENOSPC), after its file was created. NAME is
    `engine_write` (this rank's first DeepSpeed file) or `state_write` (its trainer state)."""
    wanted = os.environ.get(FAIL_ENV)
    if wanted and wanted == f"{name}:{step}:{rank}":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def upgrade_rank_state(saved: dict) -> dict:
    """A rank's saved states ({name: state}) in today's layout: a layout-1 trainer state gives
    up the extensions' states it held (momentum distillation's, grouping's records' and
    fine-tuning's figures before) to entries of their own."""
    trainer = saved.get("trainer")
    if not isinstance(trainer, dict):
        return saved
    trainer = dict(trainer)
    upgraded = {name: state for name, state in saved.items() if name != "trainer"}
    for old, new in LAYOUT_1_STATES.items():
        if old in trainer:
            upgraded.setdefault(new, trainer.pop(old))
    if "finetune_before" in trainer:
        upgraded.setdefault("finetune_report", {"before": trainer.pop("finetune_before")})
    upgraded["trainer"] = trainer
    return upgraded


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rank_state_name(rank: int) -> str:
    return f"trainer_state_rank{rank:05d}.pt"


class CheckpointError(RuntimeError):
    """No checkpoint could be resumed, or one could not be written; the message names the files."""


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    world_size: int
    fingerprint: str
    files: dict = field(default_factory=dict, compare=False, repr=False)
    layout: int = 1

    @property
    def tag(self) -> str:
        return self.path.name


def _read_marker_json(path: Path) -> dict:
    meta = json.loads((path / MARKER).read_text())
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    return meta


MAX_WORLD_SIZE = 2**20


def _whole(value, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} {value!r} is not a whole number in [{low}, {high}]")
    return value


def read_marker(path: Path) -> CheckpointInfo | None:
    """The commit record of the checkpoint folder PATH, or None where it has no readable one:
    every field checked (a step and a world size that are whole numbers in range, a file list of
    {size, sha256} records), so that a damaged or forged marker is passed over like a damaged
    file, never a traceback."""
    try:
        meta = _read_marker_json(Path(path))
        files = meta.get("files", {})
        if not isinstance(files, dict):
            raise ValueError("'files' is not a mapping")
        for name, entry in files.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise ValueError(f"file entry {name!r} is not a {{size, sha256}} record")
            _whole(entry.get("size"), 0, 2**62, f"file entry {name!r}: size")
        if not isinstance(meta["fingerprint"], str):
            raise ValueError("'fingerprint' is not a string")
        return CheckpointInfo(Path(path), _whole(meta["step"], 0, 2**62, "step"),
                              _whole(meta["world_size"], 1, MAX_WORLD_SIZE, "world_size"), meta["fingerprint"], files,
                              _whole(meta.get("layout", 1), 1, 1000, "layout"))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def committed_folders(root: Path) -> list[Path]:
    """Every step folder under ROOT that holds a marker (readable or not), oldest first. A step
    folder that is a symbolic link is not one: what it points at lies outside the run."""
    if not Path(root).is_dir():
        return []
    found = [child for child in Path(root).iterdir()
             if TAG_PATTERN.match(child.name) and not child.is_symlink() and (child / MARKER).exists()]
    return sorted(found, key=lambda p: p.name)


def complete_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Every committed checkpoint under ROOT with a readable marker, oldest first."""
    return [info for info in map(read_marker, committed_folders(root)) if info is not None]


def retained_steps(steps: list[int], keep_last: int, keep_every: int | None) -> set[int]:
    keep = set(sorted(steps)[-keep_last:]) if keep_last > 0 else set()
    if keep_every:
        keep |= {s for s in steps if s % keep_every == 0}
    return keep


# -- verification --------------------------------------------------------------------------------
def verify_checkpoint(path: Path, rank: int = 0, world_size: int = 1) -> list[str]:
    """What is wrong with the checkpoint folder PATH (empty: it can be trusted). With several
    ranks each hashes its share of the files and every rank gets every rank's findings."""
    path = Path(path)
    try:
        meta = _read_marker_json(path)
    except (OSError, ValueError, RecursionError) as error:
        return [f"{path / MARKER}: unreadable ({type(error).__name__}: {str(error)[:200]})"]
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return [f"{path / MARKER}: lists no file checksums (written by an older version, or damaged)"]
    if read_marker(path) is None:
        return [f"{path / MARKER}: malformed (a step, world size or file record out of range or of the wrong type)"]
    if TAG_PATTERN.match(path.name) and meta.get("step") != int(TAG_PATTERN.match(path.name).group(1)):
        return [f"{path / MARKER}: step {meta.get('step')!r} does not match the folder name"]
    names = sorted(files)
    problems = verify_files(path, files, names[rank::world_size])
    if rank == 0:
        problems += unlisted_files(path, files, exclude={MARKER})
    if world_size == 1:
        return problems
    return [problem for share in distributed.all_gather(problems) for problem in share]


def find_resumable(root: Path, resume: str | None, rank: int = 0, world_size: int = 1) -> CheckpointInfo | None:
    """The checkpoint to resume from. 'none' / None: start fresh. 'auto': the newest
    committed checkpoint under ROOT that verifies; those skipped are reported on rank 0, and
    when none verifies the run must not start afresh over them (CheckpointError). Otherwise a
    checkpoint folder, which must verify."""
    if resume in (None, "none"):
        return None
    if resume == "auto":
        candidates = list(reversed(committed_folders(root)))
        if not candidates:
            return None
    else:
        if not (Path(resume) / MARKER).exists():
            raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder (no {MARKER} marker)")
        candidates = [Path(resume)]
    skipped = []
    for path in candidates:
        problems = verify_checkpoint(path, rank, world_size)
        info = read_marker(path) if not problems else None
        if info is not None:
            return info
        problems = problems or [f"{path / MARKER}: unreadable"]
        skipped.append(problems)
        if rank == 0:
            more = "; trying the previous one" if path != candidates[-1] else ""
            print(f"[resume] skipping {path}: {'; '.join(problems)}{more}", file=sys.stderr, flush=True)
    named = "; ".join(problem for problems in skipped for problem in problems)
    where = f"under {root}" if resume == "auto" else f"{resume}"
    raise CheckpointError(f"no checkpoint {where} can be trusted: {named}. Move the damaged folders away, or pass "
                          f"--resume none to start afresh")


# -- saving and loading -----------------------------------------------------------------------------
class CheckpointManager:
    """Saves and restores the DeepSpeed ENGINE and the STATES (name -> stateful object) of
    every rank, one step folder per checkpoint."""

    def __init__(self, root: Path, engine, states: dict[str, Stateful], rank: int, world_size: int,
                 keep_last: int = 3, keep_every: int | None = None, parameter_name=None):
        """PARAMETER_NAME: the name today of a parameter an older layout's checkpoint names
        otherwise (for the universal copy of such a checkpoint), where names changed."""
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.engine = engine
        self.states = states
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.parameter_name = parameter_name
        self.writer = install_recording_engine(engine)

    # -- saving -----------------------------------------------------------------------------
    def save(self, step: int, fingerprint: str, files: dict[str, str] | None = None) -> Path:
        """Writes the checkpoint of STEP on every rank; FILES (name -> text) are written by
        rank 0 beside it. A write that fails on any rank fails the save on every rank
        (CheckpointError) after the partial folder was removed."""
        tag = tag_for(step)
        path = self.root / tag
        log = SaveLog(path, before_write=self._first_engine_write(step))
        if self.rank == 0:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                if path.exists():  # left by a save that was killed, or by a run that was rewound
                    shutil.rmtree(path)
                path.mkdir()
            except OSError as error:
                log.fail(Path(error.filename or path), error)
        self._agree(step, path, log)

        crash_point("engine_save", step, self.rank)
        self.writer.log = log
        try:
            self.engine.save_checkpoint(str(self.root), tag=tag, client_state=dict(UNIVERSAL_INFO), save_latest=False)
        finally:
            self.writer.log = None
        crash_point("rank_state", step, self.rank)
        state_path = path / rank_state_name(self.rank)
        log.before_write = lambda p: failure_point("state_write", step, self.rank, p)
        log.write(state_path, {name: obj.state_dict() for name, obj in self.states.items()})
        records = distributed.all_gather((log.describe_failure(), log.records))
        self._agree(step, path, log, gathered=[failure for failure, _ in records])

        if self.rank == 0:
            try:
                manifest = {name: record for _, ranks_records in records for name, record in ranks_records.items()}
                for name, text in (files or {}).items():
                    manifest[name] = write_hashed(path / name, lambda w, text=text: w.write(text.encode("utf-8")))
                for name in files_under(path, exclude=set(manifest)):  # anything written another way
                    manifest[name] = hash_file(path / name)
                _fsync_dir(path)
                crash_point("marker", step, self.rank)
                meta = {"step": step, "world_size": self.world_size, "fingerprint": fingerprint, "layout": LAYOUT,
                        "time": time.time(), "files": dict(sorted(manifest.items()))}
                write_atomically(path / MARKER, json.dumps(meta, indent=1))
            except OSError as error:
                log.fail(Path(error.filename or path), error)
        self._agree(step, path, log)
        if self.rank == 0:
            try:
                crash_point("latest", step, self.rank)
                write_atomically(self.root / "latest", tag)
                crash_point("prune", step, self.rank)
                self._prune()
            except OSError as error:  # the checkpoint itself is committed
                print(f"[checkpoint] step {step}: {error}", file=sys.stderr, flush=True)
        distributed.barrier()
        return path

    def _first_engine_write(self, step: int):
        written = []

        def before_write(path: Path) -> None:
            if not written:
                written.append(path)
                failure_point("engine_write", step, self.rank, path)
        return before_write

    def _agree(self, step: int, path: Path, log: SaveLog, gathered: list | None = None) -> None:
        """Every rank learns whether a write failed anywhere; if so, each rank that hit a
        failure says so in one line, rank 0 removes the partial folder, and all raise."""
        mine = log.describe_failure()
        failures = gathered if gathered is not None else distributed.all_gather(mine)
        if not any(failures):
            return
        if mine:
            print(f"[checkpoint] step {step}: rank {self.rank} could not write {mine}", file=sys.stderr, flush=True)
        if self.rank == 0:
            shutil.rmtree(path, ignore_errors=True)
        distributed.barrier()
        failed = [rank for rank, failure in enumerate(failures) if failure]
        raise CheckpointError(f"the checkpoint of step {step} could not be written to {path} (rank{'s' * (len(failed) > 1)} "
                              f"{', '.join(map(str, failed))}: {next(f for f in failures if f)}); the partial folder "
                              f"was removed")

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

    # -- loading ----------------------------------------------------------------------------
    def load(self, info: CheckpointInfo) -> None:
        """Restores the engine and every stateful object from INFO (verified by
        find_resumable). On another world size the engine loads a universal copy and each
        object gets the states of every old rank (`load_resharded`)."""
        universal = info.world_size != self.world_size
        load_dir = self.universal_copy(info) if universal else info.path.parent
        with safe_load.weights_only_loading():
            loaded, _ = self.engine.load_checkpoint(str(load_dir), tag=info.tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load the checkpoint {info.path}")
        # DeepSpeed restores its optimizer-step count but not its micro-step count, from which it
        # tells the gradient-accumulation boundary; a checkpoint is always taken at a boundary.
        self.engine.micro_steps = self.engine.global_steps * self.engine.gradient_accumulation_steps()
        if universal:
            saved = [upgrade_rank_state(safe_load.load(info.path / rank_state_name(r))) for r in range(info.world_size)]
            for name, obj in self.states.items():
                obj.load_resharded([state.get(name) for state in saved])
        else:
            saved = upgrade_rank_state(safe_load.load(info.path / rank_state_name(self.rank)))
            for name, obj in self.states.items():
                obj.load_state_dict(saved.get(name))

    def universal_copy(self, info: CheckpointInfo) -> Path:
        """A universal checkpoint of INFO for loading at a new world size, converted once by
        rank 0 (DeepSpeed's ds_to_universal, loading weights-only) and verified like any
        checkpoint before each use."""
        target_root = info.path.with_name(info.tag + UNIVERSAL_SUFFIX)
        error = None
        if self.rank == 0:
            try:
                if not (target_root / MARKER).exists() or verify_checkpoint(target_root):
                    self._convert_to_universal(info, target_root)
            except (OSError, CheckpointError) as failure:
                error = str(failure)
        error = distributed.broadcast(error)
        if error:
            raise CheckpointError(error)
        problems = verify_checkpoint(target_root, self.rank, self.world_size)
        if problems:
            raise CheckpointError(f"the universal copy {target_root} does not verify: {'; '.join(problems)}")
        return target_root

    def _convert_to_universal(self, info: CheckpointInfo, target_root: Path) -> None:
        if target_root.exists():
            shutil.rmtree(target_root)
        command = [sys.executable, "-m", "training.runtime.safe_load", "deepspeed.checkpoint.ds_to_universal",
                   "--input_folder", str(info.path), "--output_folder", str(target_root / info.tag),
                   "--num_extract_workers", "1", "--num_merge_workers", "1"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise CheckpointError(f"converting {info.path} to a universal checkpoint failed:\n{result.stderr[-4000:]}")
        if info.layout < LAYOUT and self.parameter_name is not None:
            # The universal copy keeps a folder of optimizer state per parameter, by name.
            zero = target_root / info.tag / "zero"
            for folder in sorted(zero.iterdir()) if zero.is_dir() else ():
                name = self.parameter_name(folder.name)
                if name != folder.name:
                    folder.rename(zero / name)
        files = {name: hash_file(target_root / name) for name in files_under(target_root, exclude={MARKER})}
        meta = {"step": info.step, "world_size": info.world_size, "fingerprint": info.fingerprint,
                "time": time.time(), "source": str(info.path), "files": files}
        write_atomically(target_root / MARKER, json.dumps(meta, indent=1))
