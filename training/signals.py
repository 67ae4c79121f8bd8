"""Pre-emption signals: the first asks for a checkpoint at the end of the current step, the
second exits at once. The exit code after a signal-triggered checkpoint tells a batch script
to requeue the job."""
from __future__ import annotations

import os
import signal
import sys

REQUEUE_EXIT_CODE = 85
IMMEDIATE_EXIT_CODE = 86


class PreemptionHandler:
    def __init__(self, signal_names: list[str]):
        self.signals = [self._parse(name) for name in signal_names]
        self.received: int | None = None
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
        if self.received is not None:
            print(f"[signal] second {signal.Signals(signum).name}: exiting now without a checkpoint", file=sys.stderr, flush=True)
            os._exit(IMMEDIATE_EXIT_CODE)
        self.received = signum
        print(f"[signal] {signal.Signals(signum).name}: checkpoint after this step, then exit {REQUEUE_EXIT_CODE}",
              file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.received is not None
