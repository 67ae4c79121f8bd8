"""Rank 0's progress line: step, loss, samples/s and the time left. A tqdm bar on an
interactive terminal (redrawn every step), a plain line every `every` steps otherwise (a
Slurm log, a pipe), so that a log file is not filled with carriage returns."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    def __init__(self, start_step: int, max_steps: int, enabled: bool, bar: bool | None, every: int):
        """`bar`: True a tqdm bar, False plain lines, None a bar when stderr is a terminal."""
        self.enabled = enabled
        self.start_step, self.max_steps, self.every = start_step, max_steps, every
        self.started = self.last = time.perf_counter()
        self.samples = 0  # since the last line (plain) or step (bar)
        self.rate = None  # samples/s, smoothed over steps for the bar
        self.bar = None
        if enabled and (sys.stderr.isatty() if bar is None else bar):
            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def echo(self, line: str) -> None:
        """Prints LINE without breaking the bar."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def update(self, step: int, loss: float, samples: int) -> None:
        """After STEP: its loss and the samples all ranks trained on in it."""
        if not self.enabled:
            return
        now = time.perf_counter()
        self.samples += samples
        if self.bar is not None:
            rate = self.samples / max(now - self.last, 1e-9)
            self.rate = rate if self.rate is None else 0.9 * self.rate + 0.1 * rate
            self.samples, self.last = 0, now
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4g}", samples_per_s=f"{self.rate:.1f}", refresh=False)
            return
        if step % self.every and step != self.max_steps:
            return
        rate = self.samples / max(now - self.last, 1e-9)
        self.samples, self.last = 0, now
        # The time left at the mean pace since this process started (a resumed run counts its own steps).
        left = (now - self.started) / (step - self.start_step) * (self.max_steps - step)
        print(f"[progress] step {step}/{self.max_steps} ({100 * step / self.max_steps:.0f}%) | loss {loss:.4g} | "
              f"{rate:.1f} samples/s | {format_seconds(left)} left", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
