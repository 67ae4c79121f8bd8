"""One trainer per output folder: OUTPUT/trainer.lock, held by rank 0 for the whole run.

The lock is `fcntl.flock` on the file, which the kernel releases when its holder dies, plus a
description of the holder written inside it (host, pid, Slurm job id, start time), which a
second trainer prints when it is refused. A lock is taken over when:
  - its flock is free (the holder ended; a description it left names a dead trainer),
  - its flock is held but the description names a process of this host that is not alive
    (an orphaned child of a dead trainer still holds the file open), or
  - its flock is held but the description names this Slurm job on another host (a requeued
    job whose first allocation's node is gone, its lock not yet released by the file server).
On a file system without flock the description alone decides, by the same rules.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK_NAME = "trainer.lock"


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    job_id: str | None
    since: float

    @classmethod
    def this_process(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), os.environ.get("SLURM_JOB_ID") or None, time.time())

    @classmethod
    def parse(cls, text: str) -> "Holder | None":
        try:
            data = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), data.get("job_id"), float(data.get("since", 0.0)))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        job = f", Slurm job {self.job_id}" if self.job_id else ""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}{job}, since {started}"


class LockHeld(RuntimeError):
    """Another trainer holds the output folder; the message names it."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def may_take_over(previous: Holder, me: Holder) -> bool:
    """Whether ME may take the lock that PREVIOUS's description claims although it is held."""
    same_host = previous.host == me.host
    if same_host and not pid_alive(previous.pid):
        return True
    return bool(previous.job_id) and previous.job_id == me.job_id and not same_host


class RunLock:
    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self.fd: int | None = None
        self.me = Holder.this_process()
        # Forked children (data-loader workers) would share the lock's open file and keep it
        # held after this process died; they close their copy.
        os.register_at_fork(after_in_child=self._close_in_child)

    def acquire(self) -> str | None:
        """Takes the lock or raises LockHeld naming the holder; returns a note when a lock left
        by another trainer was taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replaced = None
        for _ in range(5):  # a new file replaced a stale one under us: look again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                locked = _try_flock(fd)
                previous = Holder.parse(_read(fd))
                if locked is False or (locked is None and previous is not None):
                    if previous is None or not may_take_over(previous, self.me):
                        holder = previous.describe() if previous else "an unknown process (no description)"
                        raise LockHeld(f"{self.path.parent} is in use by another trainer: {holder} (lock file "
                                       f"{self.path}; remove it only if that trainer is gone)")
                    if locked is False:  # the holder's open file stays locked: start a new one
                        _replace_if_same(self.path, fd)
                        replaced = previous
                        os.close(fd)
                        fd = None
                        continue
                if not _still_at(self.path, fd):
                    os.close(fd)
                    fd = None
                    continue
                _write(fd, json.dumps(asdict(self.me)))
                self.fd, fd = fd, None
                previous = previous or replaced
                return f"took over the lock left by {previous.describe()}" if previous else None
            finally:
                if fd is not None:
                    os.close(fd)
        raise LockHeld(f"{self.path}: the lock file kept changing while it was taken; is another trainer starting?")

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            if _still_at(self.path, fd):
                os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def _close_in_child(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: held by another open file; None: this file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8"), 0)
    os.fsync(fd)


def _still_at(path: Path, fd: int) -> bool:
    """Whether PATH still names the file open as FD."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _replace_if_same(path: Path, fd: int) -> None:
    """Unlinks PATH if it is still the file open as FD (the next open creates a fresh one)."""
    if _still_at(path, fd):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
