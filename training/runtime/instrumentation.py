"""Counters of what makes a training step's cost grow with the allocation, usable on CPU:
host synchronisations, and bytes moved by collectives.

`SyncCounter` counts the operations that make the host wait for the device: reading a value
(`.item()`, `bool()`, `float()`, `.tolist()`, `.numpy()`, `.cpu()`), and operations whose
output shape depends on data (`nonzero`, boolean-mask indexing, `masked_select`, `unique`,
`repeat_interleave` without `output_size`). On a CPU run nothing actually waits, so by default
it counts them on CPU tensors as well: a CPU test then counts what a GPU run would sync on.
`.tolist()`, `.numpy()` and `.cpu()` do not reach the dispatcher for CPU tensors; they are
wrapped while the counter is active. Copies between host and accelerator are seen on GPU runs
only: to the host, and blocking ones to the device (`torch.tensor(values, device=...)`), which
wait for the stream.

`TrafficCounter` wraps the collectives of `torch.distributed` while active and records, per
category (`with traffic_category("features"): ...`, set by the code that calls them; "other"
when none is set), the calls and the bytes each rank sends under the ring model:

    all_reduce                  2 (W-1)/W x tensor       (reduce-scatter, then all-gather)
    all_gather(_single)         (W-1) x local input      (every other rank's share passes once)
    reduce_scatter(_single)     (W-1) x local output
    all_to_all(_single)         the input minus the chunk a rank keeps for itself
    broadcast, reduce           (W-1)/W x tensor         (pipelined ring, averaged over ranks)
    gather, scatter             (W-1)/W x tensor         (every rank but the root, averaged)

`payload` is what each rank hands in (for an all-to-all, its whole buffer, kept chunk
included): flat in W where the exchange is. Object collectives are counted through the tensor
collectives they call.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
from collections import Counter

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten

# Operations that always read device data on the host.
_ALWAYS_SYNC = {
    _aten._local_scalar_dense.default,  # .item(), bool(), float(), int(), `if tensor:`
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten.equal.default,
    _aten.allclose.default,
    _aten._unique.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
    _aten.unique_dim_consecutive.default,
}
_BOOL_INDEXED = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
                 _aten._index_put_impl_.default}
_TORCH_DIR = os.path.dirname(torch.__file__)
_THIS_FILE = os.path.abspath(__file__)


@dataclasses.dataclass(frozen=True)
class SyncEvent:
    op: str
    # "deepspeed" when DeepSpeed's own code asked for it, "loader" for the data pipeline (host
    # memory only, so no device is involved on any run), else "project"
    origin: str
    where: str  # file:line of the innermost frame outside torch


# training/runtime/instrumentation.py -> the checkout's (or the install's) data_pipeline/
_LOADER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(_THIS_FILE))), "data_pipeline")


def _origin(path: str) -> str:
    if f"{os.sep}deepspeed{os.sep}" in path:
        return "deepspeed"
    if os.path.abspath(path).startswith(_LOADER_DIR + os.sep):
        # The data pipeline reads and batches in host memory: what it reads is never on a
        # device (torch's DataLoader reads its own bookkeeping tensors).
        return "loader"
    return "project"


def _caller() -> tuple[str, str]:
    """(origin, file:line) of the innermost frame outside torch and this module."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_TORCH_DIR) and os.path.abspath(path) != _THIS_FILE and "<" not in path:
            return _origin(path), f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "project", "?"


def _is_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class SyncCounter(TorchDispatchMode):
    """Counts host synchronisations inside its `with` block (see the module's docstring).

    ``count_cpu=True`` also counts them on CPU tensors (a CPU run standing in for a GPU one);
    with False only tensors on an accelerator count. ``events`` lists each one with where it
    happened; ``count(origin)`` totals them."""

    _wrapped = ("tolist", "numpy", "cpu")

    def __init__(self, count_cpu: bool = True):
        super().__init__()
        self.count_cpu = count_cpu
        self.events: list[SyncEvent] = []
        self._inside_wrapper = 0
        self._originals: dict[str, object] = {}

    def _counts(self, tensors) -> bool:
        return any(isinstance(t, torch.Tensor) and (self.count_cpu or t.device.type != "cpu") for t in tensors)

    def _record(self, op: str) -> None:
        origin, where = _caller()
        self.events.append(SyncEvent(op, origin, where))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._inside_wrapper and self._syncs(func, args, kwargs):
            self._record(str(func.overloadpacket.__name__))
        return func(*args, **kwargs)

    def _syncs(self, func, args, kwargs) -> bool:
        if func in _ALWAYS_SYNC:
            return self._counts(args[:1])
        if func in _BOOL_INDEXED:
            return _is_bool_index(args[1]) and self._counts(args[:1])
        if func is _aten.repeat_interleave.Tensor:
            return kwargs.get("output_size") is None and self._counts(args[:1])
        if func in (_aten._to_copy.default, _aten.copy_.default):
            # Only seen on GPU runs (on CPU the wrappers count): a copy from an accelerator to the
            # host, or a blocking one from host memory to an accelerator (torch.tensor(..., device=)
            # included), which waits for the stream.
            if func is _aten.copy_.default:
                source, target = args[1], args[0].device
                blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
            else:
                source, target = args[0], kwargs.get("device")
                blocking = not kwargs.get("non_blocking", False)
            if target is None or not isinstance(source, torch.Tensor):
                return False
            to_host, from_host = torch.device(target).type == "cpu", source.device.type == "cpu"
            return (to_host and not from_host) or (from_host and not to_host and blocking)
        return False

    def _wrap(self, name: str):
        original = getattr(torch.Tensor, name)
        counter = self

        def wrapper(tensor, *args, **kwargs):
            if counter._counts([tensor]) and not counter._inside_wrapper:
                counter._record(name)
            counter._inside_wrapper += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                counter._inside_wrapper -= 1

        self._originals[name] = original
        setattr(torch.Tensor, name, wrapper)

    def __enter__(self):
        for name in self._wrapped:
            self._wrap(name)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, original in self._originals.items():
                setattr(torch.Tensor, name, original)
            self._originals.clear()

    def count(self, origin: str | None = None) -> int:
        return sum(1 for e in self.events if origin is None or e.origin == origin)

    def summary(self, origin: str | None = None) -> dict[str, int]:
        """Events per (op at file:line), most frequent first."""
        counts = Counter(f"{e.op} at {e.where}" for e in self.events if origin is None or e.origin == origin)
        return dict(counts.most_common())


# -- collectives ------------------------------------------------------------------------------

_category = threading.local()


@contextlib.contextmanager
def traffic_category(name: str):
    """Collectives called inside are recorded under NAME by an active TrafficCounter."""
    stack = getattr(_category, "stack", None)
    if stack is None:
        stack = _category.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def current_category() -> str:
    stack = getattr(_category, "stack", None)
    return stack[-1] if stack else "other"


@dataclasses.dataclass
class Traffic:
    calls: int = 0
    sent: float = 0.0  # bytes this rank sends, ring model
    payload: int = 0  # bytes this rank hands in


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _sent_bytes(name: str, args: tuple, kwargs: dict) -> tuple[float, int]:
    """(bytes sent under the ring model, payload bytes) of one call of collective NAME."""
    def arg(position: int, key: str):
        return kwargs[key] if key in kwargs else (args[position] if len(args) > position else None)

    group_position = {"all_reduce": 2, "all_gather": 2, "all_gather_into_tensor": 2, "all_gather_single": 2,
                      "_all_gather_base": 2, "reduce_scatter": 3, "reduce_scatter_tensor": 3,
                      "reduce_scatter_single": 3, "_reduce_scatter_base": 3,
                      "all_to_all_single": 4, "all_to_all": 2, "broadcast": 2, "reduce": 3, "gather": 3,
                      "scatter": 3}[name]
    group = arg(group_position, "group")
    world = dist.get_world_size(group)
    share = (world - 1) / world
    if name == "all_reduce":
        size = _nbytes(arg(0, "tensor"))
        return 2 * share * size, size
    if name == "all_gather":
        size = _nbytes(arg(1, "tensor"))
        return (world - 1) * size, size
    if name in ("all_gather_into_tensor", "all_gather_single", "_all_gather_base"):
        size = _nbytes(arg(1, "input_tensor"))
        return (world - 1) * size, size
    if name == "reduce_scatter":
        inputs = arg(1, "input_list")
        return (world - 1) * _nbytes(arg(0, "output")), sum(_nbytes(t) for t in inputs)
    if name in ("reduce_scatter_tensor", "reduce_scatter_single", "_reduce_scatter_base"):
        return (world - 1) * _nbytes(arg(0, "output")), _nbytes(arg(1, "input"))
    if name == "all_to_all_single":
        source = arg(1, "input")
        size = _nbytes(source)
        splits = arg(3, "input_split_sizes")
        if splits:
            row = size // max(source.shape[0], 1)
            kept = splits[dist.get_rank(group)] * row
            return size - kept, size
        return share * size, size
    if name == "all_to_all":
        inputs = arg(1, "input_tensor_list")
        size = sum(_nbytes(t) for t in inputs)
        return size - _nbytes(inputs[dist.get_rank(group)]), size
    # broadcast, reduce, gather, scatter: the tensor each rank passes in
    size = _nbytes(arg(0, "tensor"))
    return share * size, size


_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "_all_gather_base",
                "reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single", "_reduce_scatter_base",
                "all_to_all_single", "all_to_all", "broadcast", "reduce", "gather", "scatter")


class TrafficCounter:
    """Records the collectives called inside its `with` block (see the module's docstring):
    ``by_category[name]`` is a `Traffic` of calls, bytes sent and payload bytes."""

    def __init__(self):
        self.by_category: dict[str, Traffic] = {}
        self._saved: list[tuple[object, str, object]] = []
        self._depth = 0

    def _wrap(self, name: str, original):
        counter = self

        def wrapper(*args, **kwargs):
            if counter._depth == 0:
                sent, payload = _sent_bytes(name, args, kwargs)
                record = counter.by_category.setdefault(current_category(), Traffic())
                record.calls += 1
                record.sent += sent
                record.payload += payload
            counter._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                counter._depth -= 1

        return wrapper

    def __enter__(self):
        from torch.distributed import distributed_c10d

        originals = {name: getattr(distributed_c10d, name) for name in _COLLECTIVES if hasattr(distributed_c10d, name)}
        wrappers = {name: self._wrap(name, original) for name, original in originals.items()}
        for module in (dist, distributed_c10d):
            for name, wrapper in wrappers.items():
                if getattr(module, name, None) is originals[name]:
                    self._saved.append((module, name, originals[name]))
                    setattr(module, name, wrapper)
        return self

    def __exit__(self, *exc):
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved.clear()

    def sent(self, category: str) -> float:
        return self.by_category.get(category, Traffic()).sent

    def payload(self, category: str) -> int:
        return self.by_category.get(category, Traffic()).payload
