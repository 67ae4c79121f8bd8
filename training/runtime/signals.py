"""Pre-emption signals: the first asks for a checkpoint at the end of the current step, the
second exits at once. The exit code after a signal-triggered checkpoint tells a batch script
to requeue the job. And the launcher's death, which sends no signal (`timeout`, `docker stop`,
Kubernetes and systemd send SIGTERM to the launcher, which dies without passing it on): the rank
checkpoints as after a pre-emption signal, within a bound, else exits at once."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import psutil  # a dependency of DeepSpeed

REQUEUE_EXIT_CODE = 85
IMMEDIATE_EXIT_CODE = 86


class PreemptionHandler:
    def __init__(self, signal_names: list[str]):
        self.signals = [self._parse(name) for name in signal_names]
        self.received: int | str | None = None  # the signal, or the reason given to request()
        self.signalled = False
        self._previous = {}

    @staticmethod
    def _parse(name: str) -> signal.Signals:
        key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
        try:
            return signal.Signals[key]
        except KeyError:
            raise ValueError(f"unknown signal name {name!r} in guard.signals") from None

    def install(self) -> "PreemptionHandler":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signalled:
            print(f"[signal] second {signal.Signals(signum).name}: exiting now without a checkpoint", file=sys.stderr, flush=True)
            os._exit(IMMEDIATE_EXIT_CODE)
        # A request() before (the launcher gone: Slurm's scancel signals the launcher and the
        # ranks at once) does not make this signal a second one.
        self.signalled = True
        if self.received is None:
            self.received = signum
        print(f"[signal] {signal.Signals(signum).name}: checkpoint after this step, then exit {REQUEUE_EXIT_CODE}",
              file=sys.stderr, flush=True)

    def request(self, reason: str) -> None:
        """A checkpoint at the end of the current step, then exit REQUEUE_EXIT_CODE, as after a
        first signal (REASON is what asked)."""
        if self.received is None:
            self.received = reason

    @property
    def requested(self) -> bool:
        return self.received is not None


class LauncherWatch:
    """Ends this rank when the process that launched it dies.

    Killing the `deepspeed` launcher leaves its ranks running otherwise: the runner starts
    DeepSpeed's per-node launcher (`deepspeed.launcher.launch`), which starts the ranks, and
    neither passes a SIGTERM or SIGKILL on. A daemon thread polls the rank's parent and, above
    a DeepSpeed launcher, the launcher processes above it (the runner the user started); when
    one of them is gone, the rank says so and calls ON_GONE, which asks for a checkpoint at the
    end of the step (every rank of the node sees its launcher go; the step's stop flag, reduced
    over ranks, takes the others along), and exits at once (IMMEDIATE_EXIT_CODE) if it is still
    running GRACE_S seconds later: the ranks of another node may be gone too, and a collective
    that waits for them ends only at its timeout. Without ON_GONE the rank exits at once. Ranks
    started by srun are watched the same way (their parent is slurmstepd). A plain
    single-process run is not watched: its parent is a shell, which may well exit (nohup) while
    the run should go on."""

    POLL_SECONDS = 1.0

    def __init__(self, processes, before_exit=lambda: None, on_gone=None, grace_s: float = 0.0):
        self.processes = processes
        self.before_exit = before_exit
        self.on_gone = on_gone
        self.grace_s = grace_s
        self._thread = None

    @staticmethod
    def launchers() -> list:
        """The parent, and the DeepSpeed launcher processes above it."""
        chain = []
        try:
            process = psutil.Process().parent()
            while process is not None and process.pid > 1:
                chain.append(process)
                if not _is_deepspeed_launcher(process):
                    break
                process = process.parent()
        except psutil.Error:
            pass
        return chain

    @classmethod
    def for_this_rank(cls, before_exit=lambda: None, on_gone=None, grace_s: float = 0.0) -> "LauncherWatch":
        """Watches the launchers when a launcher started this rank (it set RANK, or srun set
        SLURM_PROCID); call before the process group is set up, which sets RANK itself."""
        launched = "RANK" in os.environ or "SLURM_PROCID" in os.environ
        return cls(cls.launchers() if launched else [], before_exit, on_gone, grace_s).start()

    def start(self) -> "LauncherWatch":
        if self.processes:
            self._thread = threading.Thread(target=self._watch, name="launcher-watch", daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while all(_alive(process) for process in self.processes):
            time.sleep(self.POLL_SECONDS)
        gone = next(process.pid for process in self.processes if not _alive(process))
        if self.on_gone is not None and self.on_gone():
            print(f"[launcher] the launcher process {gone} is gone: this rank (pid {os.getpid()}) checkpoints after "
                  f"this step and exits {REQUEUE_EXIT_CODE}; if it has not within {self.grace_s:g} s "
                  f"(guard.launcher_grace_s), it exits {IMMEDIATE_EXIT_CODE}", file=sys.stderr, flush=True)
            time.sleep(self.grace_s)
            print(f"[launcher] no checkpoint within {self.grace_s:g} s of the launcher's end: stopping this rank "
                  f"(pid {os.getpid()}) without one, exit {IMMEDIATE_EXIT_CODE}", file=sys.stderr, flush=True)
        else:
            print(f"[launcher] the launcher process {gone} is gone: stopping this rank (pid {os.getpid()}) "
                  f"without a checkpoint, exit {IMMEDIATE_EXIT_CODE}", file=sys.stderr, flush=True)
        try:
            self.before_exit()
        finally:
            os._exit(IMMEDIATE_EXIT_CODE)


def _alive(process) -> bool:
    """Neither gone, nor its pid reused by another process, nor dead but not yet reaped (a
    zombie: a killed launcher whose own parent has not waited for it yet)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_deepspeed_launcher(process) -> bool:
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return False
    # `python -u -m deepspeed.launcher.launch ...` and `python .../bin/deepspeed ...`
    return any(part.startswith("deepspeed.launcher") or os.path.basename(part) == "deepspeed" for part in cmdline[:4])
