"""Which rank stopped answering: every rank notes its progress in OUTPUT/heartbeats/ (a small
file per rank, at most every BEAT_SECONDS), and a rank whose collective timed out reads them to
name the ranks it waited for. A frozen rank (SIGSTOP, a hung driver, a dead node) cannot say
so itself, and the collective's own error names no rank.

The output folder is the one the checkpoints go to, shared by every node."""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

FOLDER = "heartbeats"
BEAT_SECONDS = 5.0
# gloo's timeouts and a peer that went away; NCCL's watchdog error.
_COLLECTIVE_FAILURE = re.compile(r"Timed out waiting \d+ms|Connection closed by peer|Connection reset by peer|"
                                 r"collective operation timeout", re.IGNORECASE)


class Heartbeat:
    def __init__(self, output_dir: Path, rank: int):
        self.path = Path(output_dir) / FOLDER / f"rank{rank:05d}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.last = float("-inf")

    def beat(self, step: int, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < BEAT_SECONDS:
            return
        self.last = now
        try:
            self.path.write_text(json.dumps({"step": step, "time": now, "host": self.host, "pid": self.pid}))
        except OSError:
            pass  # a note for a diagnosis: never a reason to stop training


def is_collective_failure(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and bool(_COLLECTIVE_FAILURE.search(str(error)))


def silent_ranks(output_dir: Path, world_size: int, me: int, now: float | None = None) -> str:
    """The other ranks, least recently heard from first, as a phrase for a message."""
    now = time.time() if now is None else now
    heard = []
    for rank in range(world_size):
        if rank == me:
            continue
        try:
            note = json.loads((Path(output_dir) / FOLDER / f"rank{rank:05d}.json").read_text())
            heard.append((float(note["time"]), f"rank {rank} (step {int(note['step'])}, {now - float(note['time']):.0f} s "
                                               f"ago, host {note['host']} pid {note['pid']})"))
        except (OSError, ValueError, KeyError, TypeError):
            heard.append((float("-inf"), f"rank {rank} (never heard from)"))
    heard.sort()
    if not heard:
        return "no other rank"
    return "; ".join(text for _, text in heard[:4]) + (f"; and {len(heard) - 4} more" if len(heard) > 4 else "")
