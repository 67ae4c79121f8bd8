"""Training metrics: a console line, a JSONL file, and TensorBoard events and a Weights & Biases
run where the run reports to them (logging.report_to), written by rank 0.

Throughput figures: samples/s over the logging window, the step time split into waiting for
data and computing, TFLOP/s from the FLOPs of the window's steps (counted once per set of batch
kinds, see `StepFlops`), and MFU where the device's dense bf16 peak is known."""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 matrix peaks in TFLOP/s (vendor data sheets), matched against the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
               "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def device_peak_tflops(device: torch.device | None = None) -> float | None:
    """The dense bf16 peak of DEVICE (default: the current CUDA device); None when unknown."""
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


class StepFlops:
    """FLOPs of one training micro-step (forward and backward) for each set of batch kinds,
    counted by torch's FlopCounterMode the first time that set comes, during that step itself:
    MFU needs no extra pass, and later steps pay nothing. Region batches vary in size; the
    first one of a kind set stands for the others."""

    def __init__(self):
        self.known: dict[frozenset, float] = {}

    def counting(self, kinds) -> contextlib.AbstractContextManager:
        """Wrap a micro-step's forward and backward in this."""
        kinds = frozenset(kinds)
        if kinds in self.known:
            return contextlib.nullcontext()
        return self._count(kinds)

    @contextlib.contextmanager
    def _count(self, kinds: frozenset):
        counter = FlopCounterMode(display=False)
        with counter:
            yield
        self.known[kinds] = float(counter.get_total_flops())

    def of(self, kinds) -> float | None:
        return self.known.get(frozenset(kinds))


class Window:
    """Sums over the steps since the last log line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.samples = 0
        self.data_seconds = 0.0
        self.compute_seconds = 0.0
        self.flops = 0.0
        self.flops_known = True
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.started = time.perf_counter()

    def add(self, values: dict[str, float], samples: int, data_seconds: float, compute_seconds: float,
            flops: float | None = None) -> None:
        self.steps += 1
        self.samples += samples
        self.data_seconds += data_seconds
        self.compute_seconds += compute_seconds
        if flops is None:
            self.flops_known = False
        else:
            self.flops += flops
        for key, value in values.items():
            if value is not None and math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}


def drop_rows_after(path: Path, step: int) -> int:
    """Rewrites the JSONL log PATH without the rows of steps after STEP: a run resumed from
    the checkpoint of STEP writes them again. A torn last line (a crash mid-write) goes too.
    Returns how many rows were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        try:
            row = json.loads(line)
            later = row.get("step", 0) > step
        except (ValueError, AttributeError, TypeError):
            later = True
        if later:
            dropped += 1
        else:
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)
    return dropped


class MetricsLogger:
    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool, world_size: int = 1,
                 device: torch.device | None = None, echo=print, wandb=None):
        self.enabled = enabled
        self.world_size = world_size
        self.peak = device_peak_tflops(device)
        self.echo = echo  # how console lines are printed (through the progress bar when there is one)
        self.window = Window()
        self.jsonl = None
        self.tb = None
        self.wandb = wandb  # a WandbReporter (training/engine/wandb_reporter.py), or None
        self.lost: dict[str, int] = {}  # sink -> rows it could not take
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(output_dir / "metrics.jsonl", "a", buffering=1, encoding="utf-8")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(output_dir / "tensorboard"))

    def record(self, values: dict[str, float], samples: int, data_seconds: float, compute_seconds: float,
               flops: float | None = None) -> None:
        """One optimizer step's figures; FLOPS is what this rank computed in it, where known."""
        self.window.add(values, samples, data_seconds, compute_seconds, flops)

    def flush(self, step: int, extra: dict | None = None) -> dict:
        """Writes the window's means at STEP and starts a new window; returns what was written."""
        window = self.window
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        row = {"step": step, **window.means()}
        if window.steps:
            step_time = (window.data_seconds + window.compute_seconds) / window.steps
            row.update({
                "samples_per_s": window.samples * self.world_size / elapsed,
                "step_s": step_time,
                "data_wait_s": window.data_seconds / window.steps,
                "compute_s": window.compute_seconds / window.steps,
            })
            if window.flops_known and window.flops:
                tflops = window.flops / elapsed / 1e12
                row["tflops_per_gpu"] = tflops
                if self.peak:
                    row["mfu"] = tflops / self.peak
        row.update(extra or {})
        if self.lost:
            row["metrics_lost"] = sum(self.lost.values())
        self.write(row, "train")
        window.reset()
        return row

    def write(self, row: dict, prefix: str) -> None:
        if not self.enabled:
            return
        # A full disk or a failed mount where the logs go must not end a run whose checkpoints
        # may still be written elsewhere: the row is lost for that sink, said once, and the
        # sink tried again at the next row.
        with self._sink("metrics.jsonl"):
            self.jsonl.write(json.dumps({"kind": prefix, "time": time.time(), **row}, sort_keys=True) + "\n")
        if self.tb is not None:
            with self._sink("TensorBoard"):
                for key, value in row.items():
                    if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                        self.tb.add_scalar(f"{prefix}/{key}", value, row["step"])
                self.tb.flush()
        if self.wandb is not None:
            with self._sink("Weights & Biases"):
                self.wandb.log(row, prefix)
        self.echo(self.console_line(row, prefix))

    @contextlib.contextmanager
    def _sink(self, name: str):
        try:
            yield
        except OSError as error:
            self.lost[name] = self.lost.get(name, 0) + 1
            if self.lost[name] == 1:
                self.echo(f"[metrics] warning: could not write to {name} ({error.strerror or error}); training goes "
                          f"on, the console has every row; rows lost there are counted (metrics_lost)")

    @staticmethod
    def console_line(row: dict, prefix: str) -> str:
        parts = [f"[{prefix}] step {row['step']}"]
        for key, value in row.items():
            if key == "step" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        return " | ".join(parts)

    def close(self, exit_code: int = 0) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close(exit_code)
