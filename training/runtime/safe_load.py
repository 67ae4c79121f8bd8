"""Loading checkpoint files without running code: `torch.load(..., weights_only=True)` for
the trainer's own files and for DeepSpeed's.

DeepSpeed 0.19.8 calls `torch.load(..., weights_only=False)` wherever it reads a checkpoint:
its checkpoint engine (model and ZeRO optimizer files), the ZeRO-3 and universal optimizer
state loaders, `zero_to_fp32` (export) and `ds_to_universal` (conversion to another world
size). Inside `weights_only_loading()` every one of those calls loads with
`weights_only=True` instead, and only the few DeepSpeed classes its files hold are allowed
besides tensors and plain types. A file holding anything else (a pickled function call, any
other class) raises `pickle.UnpicklingError` before any of it is built.

    python -m training.runtime.safe_load MODULE ARG...   runs MODULE as a script under the same rule
                                                 (used for deepspeed.checkpoint.ds_to_universal)
"""
from __future__ import annotations

import contextlib
import importlib
import runpy
import sys
import threading

import torch

# The classes DeepSpeed's checkpoint files of the ZeRO stages 1-3 (bf16, fp16, fp32) and their
# universal copies hold, found by saving each and listing
# torch.serialization.get_unsafe_globals_in_checkpoint. Their unpickling sets attributes only:
# it runs no constructor and calls nothing else.
ALLOWED_GLOBALS = (
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),          # ZeRO optimizer files: the stage
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),        # ... the static loss scaler (bf16, fp32)
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),  # ... the dynamic one (fp16)
    ("deepspeed.utils.tensor_fragment", "fragment_address"),     # ZeRO-1/2: param_slice_mappings
)

_lock = threading.Lock()
_depth = 0
_original_load = torch.load


def short_error(error: BaseException) -> str:
    """The line of a (long, multi-line) torch.load error that says what was refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "WeightsUnpickler error" in line:  # what the unpickler refused
            return line.split(". Please use")[0]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def allowed_globals() -> list:
    return [getattr(importlib.import_module(module), name) for module, name in ALLOWED_GLOBALS]


def load(path, map_location="cpu", mmap: bool = False):
    """One checkpoint file, tensors and plain types only (plus the DeepSpeed classes above)."""
    with torch.serialization.safe_globals(allowed_globals()):
        return _original_load(path, map_location=map_location, weights_only=True, mmap=mmap)


def _forced_load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **pickle_load_args):
    if pickle_module is not None:
        raise RuntimeError("a checkpoint loader asked for its own pickle module; only weights_only loading is allowed")
    with torch.serialization.safe_globals(allowed_globals()):
        return _original_load(f, map_location=map_location, weights_only=True, mmap=mmap, **pickle_load_args)


@contextlib.contextmanager
def weights_only_loading():
    """Within the block, every `torch.load` (whatever `weights_only` its caller passes) loads
    with `weights_only=True` and the allow-list. Re-entrant."""
    global _depth
    with _lock:
        if _depth == 0:
            torch.load = _forced_load
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.load = _original_load


def run_module(argv: list[str]) -> None:
    """`python -m training.runtime.safe_load MODULE ARG...`: MODULE's `__main__` with ARG... as its
    command line, every torch.load in it weights-only."""
    if not argv:
        raise SystemExit("usage: python -m training.runtime.safe_load MODULE [ARG...]")
    module, *args = argv
    sys.argv = [module, *args]
    with weights_only_loading():
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    run_module(sys.argv[1:])
