"""What the inference and evaluation commands share on their command lines: integer bounds,
`--device` and `--threads`. Nothing here imports torch at module level, so that `--help` and
argument errors answer before the model libraries load."""
from __future__ import annotations

import argparse
from pathlib import Path

DEVICE_HELP = ("where the model runs: cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)")
THREADS_HELP = ("CPU threads for the model's computation (default: torch's, one per core). On a machine other "
                "jobs share, 1 or 2 is often many times faster than the default, whose threads wait for each other")


class DeviceError(ValueError):
    """A --device that names no device of this machine; one line, exit code 2."""


def at_least(minimum: int):
    """An argparse type: an int >= MINIMUM (argparse reports anything else with exit code 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def output_file(text: str) -> Path:
    """An argparse type: a file to write, refused (exit 2, one line) when it names a folder or
    lies in a folder that is not there."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name inside it")
    if path.parent != Path("") and path.parent.exists() and not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent} is not a folder")
    return path


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """`--device` (None: chosen by `resolve_device`) and `--threads`."""
    parser.add_argument("--device", default=None, help=DEVICE_HELP)
    parser.add_argument("--threads", type=at_least(1), default=None, help=THREADS_HELP)


def resolve_device(name: str | None, threads: int | None = None) -> str:
    """The device NAME names, checked against this machine (None: cuda when visible, else cpu);
    THREADS, when given, set torch's intra-op threads."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {name}: not a device name (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: no CUDA device is visible on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"numbered from 0")
    elif device.type != "cpu":
        raise DeviceError(f"--device {name}: only cpu and cuda devices are supported")
    return str(device)
