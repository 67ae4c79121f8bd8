"""One trainer per output folder (training/runtime/run_lock.py), and ranks that stop when their
launcher dies (training/runtime/signals.py LauncherWatch): real processes, real flock."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from training.runtime.run_lock import LOCK_NAME, LockHeld, RunLock
from training.runtime.signals import IMMEDIATE_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()


def start_holder(directory: Path, description: dict | None = None, fork_child: bool = False,
                 env: dict | None = None) -> subprocess.Popen:
    """A process that takes the lock of DIRECTORY and prints 'held'. With DESCRIPTION it then
    writes that holder description over its own (the file names someone else while this
    process holds its flock). With FORK_CHILD it forks a child that sleeps on, and exits;
    otherwise it sleeps."""
    script = textwrap.dedent(f"""\
        import json, multiprocessing, os, time
        from pathlib import Path
        from training.runtime.run_lock import RunLock
        lock = RunLock(Path({str(directory)!r}))
        lock.acquire()
        if {description!r} is not None:
            os.ftruncate(lock.fd, 0)
            os.pwrite(lock.fd, json.dumps({description!r}).encode(), 0)
        if {fork_child!r}:
            multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,)).start()
            print("held", flush=True)
            os._exit(0)
        print("held", flush=True)
        time.sleep(60)
        """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert process.stdout.readline() == "held\n"
    return process


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def description(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_second_trainer_is_refused_naming_the_holder_until_it_ends(tmp_path):
    holder = start_holder(tmp_path, env={"SLURM_JOB_ID": "4242"})
    try:
        with pytest.raises(LockHeld, match=rf"^{tmp_path} is in use by another trainer: host {HOST}, pid {holder.pid}, "
                                           rf"Slurm job 4242, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \(lock file "):
            RunLock(tmp_path).acquire()
    finally:
        stop(holder)
    # SIGKILLed: the kernel released its flock; the description it left is taken over.
    lock = RunLock(tmp_path)
    note = lock.acquire()
    assert re.match(rf"took over the lock left by host {HOST}, pid {holder.pid}, Slurm job 4242, since ", note)
    assert description(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / LOCK_NAME).read_text() == ""
    again = RunLock(tmp_path)
    assert again.acquire() is None  # released cleanly: nothing left to take over
    again.release()


def test_a_stale_lock_of_a_dead_trainer_is_taken_over_even_while_a_leftover_process_holds_the_file(tmp_path):
    # The file still flock-ed (by an orphaned helper process), its description naming a trainer
    # of this host that is gone.
    gone = {"host": HOST, "pid": dead_pid(), "job_id": None, "since": time.time() - 60}
    leftover = start_holder(tmp_path, description=gone)
    try:
        lock = RunLock(tmp_path)
        assert lock.acquire().startswith(f"took over the lock left by host {HOST}, pid {gone['pid']}, since ")
        assert description(tmp_path / LOCK_NAME)["pid"] == os.getpid()
        # ... and now this process holds it: a third trainer is refused naming it.
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
        lock.release()
    finally:
        stop(leftover)


@pytest.mark.parametrize("job, taken", [("77", True), ("78", False)])
def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, job, taken, monkeypatch):
    # Held, in the name of job 77 on a node that is gone (its lock not yet released).
    first = {"host": "node-lost", "pid": 123, "job_id": "77", "since": time.time() - 600}
    holder = start_holder(tmp_path, description=first)
    try:
        monkeypatch.setenv("SLURM_JOB_ID", job)
        lock = RunLock(tmp_path)
        if taken:
            assert lock.acquire().startswith("took over the lock left by host node-lost, pid 123, Slurm job 77")
            assert description(tmp_path / LOCK_NAME)["job_id"] == "77"
            lock.release()
        else:
            with pytest.raises(LockHeld, match="in use by another trainer: host node-lost, pid 123, Slurm job 77"):
                lock.acquire()
    finally:
        stop(holder)


def test_forked_children_do_not_keep_the_lock(tmp_path):
    # The holder forks a child (as the data loader forks its workers) and exits; the child
    # lives on but closed its copy of the lock file, so the lock is free.
    start_holder(tmp_path, fork_child=True).wait()
    children = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and "held" in " ".join(p.info["cmdline"])]
    assert children
    inode = (tmp_path / LOCK_NAME).stat().st_ino
    lock = RunLock(tmp_path)
    try:
        assert lock.acquire().startswith("took over the lock left by")
        # The flock of the same file was free: no new lock file had to replace a held one.
        assert (tmp_path / LOCK_NAME).stat().st_ino == inode
        assert description(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    finally:
        lock.release()
        for child in children:
            child.kill()


def test_a_rank_stops_when_its_launcher_dies(tmp_path):
    # launcher -> rank, as the deepspeed launcher starts ranks (RANK in their environment).
    rank = textwrap.dedent("""\
        import time
        from training.runtime.signals import LauncherWatch
        watch = LauncherWatch.for_this_rank()
        print("watching", [p.pid for p in watch.processes], flush=True)
        time.sleep(60)
        """)
    launcher = textwrap.dedent(f"""\
        import os, subprocess, sys, time
        rank = subprocess.Popen([sys.executable, "-c", {rank!r}], env=dict(os.environ, RANK="0"),
                                stdout=open({str(tmp_path / 'rank.log')!r}, "w"), stderr=subprocess.STDOUT)
        print(rank.pid, flush=True)
        time.sleep(60)
        """)
    process = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    rank = psutil.Process(int(process.stdout.readline()))
    log = tmp_path / "rank.log"
    deadline = time.monotonic() + 60
    while "watching" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and rank.is_running()
        time.sleep(0.1)
    assert f"watching [{process.pid}]" in log.read_text()
    process.kill()  # and not reaped yet: a zombie is a dead launcher too
    rank.wait(timeout=30)  # raises if the rank lives on
    process.wait()
    assert f"[launcher] the launcher process {process.pid} is gone: stopping this rank" in log.read_text()
    assert f"exit {IMMEDIATE_EXIT_CODE}" in log.read_text()
