"""The ITM hard-negative exchange: only the drawn rows move between ranks, at fixed shapes.

An all-to-all needs its split sizes on the host, and the number of negatives one rank draws
from another's batch is known only on the device. So, as in GShard / Switch routing, every
(sender, receiver) pair of ranks gets a fixed number of slots per step,
``capacity = min(rows, ceil(factor * rows / world))``: the buffers are exchanged at their full
size, a request beyond its pair's slots is dropped and reported as such (its pair gets weight
0, like a row that has no negative to draw), and nothing is read on the host. Each rank hands
``world * capacity`` rows, about ``factor * rows`` whatever the world size; with
``world <= factor`` every request fits.

Rows are addressed by their place in the fixed-shape gather of the batch kind: global index
``owner_rank * rows + local_row``.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from training.objectives.gather import all_to_all_rows, world_size

CATEGORY = "itm_exchange"


def slot_capacity(rows: int, world: int, factor: float) -> int:
    """Slots per (sender, receiver) pair of ranks for a kind padded to ROWS rows per rank."""
    return max(1, min(rows, math.ceil(factor * rows / world)))


def assign_slots(destination: torch.Tensor, wanted: torch.Tensor, world: int, capacity: int):
    """Places each wanted request in its destination's slots, in row order.

    destination (R,) long rank; wanted (R,) bool. Returns (position (R,) long in the
    ``world * capacity`` buffer, ``world * capacity`` for a request that is not placed; placed
    (R,) bool)."""
    # (F.one_hot checks its input's range on the host for CPU tensors.)
    ranks = torch.arange(world, device=destination.device)
    per_destination = ((destination[:, None] == ranks[None, :]) & wanted[:, None]).long()
    slot = per_destination.cumsum(dim=0).gather(1, destination[:, None]).squeeze(1) - 1
    placed = wanted & (slot < capacity)
    trash = world * capacity
    return torch.where(placed, destination * capacity + slot, torch.full_like(slot, trash)), placed


def _scatter_to_slots(values: torch.Tensor, position: torch.Tensor, size: int, fill: int) -> torch.Tensor:
    """A (size,) buffer holding VALUES at POSITION (positions >= size are dropped), FILL elsewhere."""
    buffer = torch.full((size + 1,), fill, dtype=values.dtype, device=values.device)
    return buffer.scatter(0, position, values)[:size]


def fetch_rows(payload: torch.Tensor, index: torch.Tensor, wanted: torch.Tensor, rows: int,
               capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each rank fetches the rows it wants of other ranks' PAYLOAD, with gradient back to them.

    payload (R_own, ...): this rank's rows, R_own <= ROWS; index (R,) long global index of the
    row each of this rank's requests wants; wanted (R,) bool. Returns (fetched (R, ...): the
    wanted rows, anything where a request was not placed; placed (R,) bool)."""
    world = world_size()
    position, placed = assign_slots(torch.div(index, rows, rounding_mode="floor"), wanted, world, capacity)
    size = world * capacity
    requests = _scatter_to_slots(torch.where(placed, index % rows, -1), position, size, -1)
    asked = all_to_all_rows(requests, CATEGORY)  # chunk i: the local rows rank i asks of this rank
    answers = all_to_all_rows(payload.index_select(0, asked.clamp(min=0)), CATEGORY)
    return answers.index_select(0, position.clamp(max=size - 1)), placed


@dataclasses.dataclass
class Received:
    rows: torch.Tensor  # (K, ...) rows other ranks sent to this rank (with gradient back to them)
    target: torch.Tensor  # (K,) long: the local row each is to be paired with
    valid: torch.Tensor  # (K,) bool: a real row, not an empty slot
    dropped_sending: torch.Tensor  # () long: this rank's rows that found no slot
    dropped_receiving: torch.Tensor  # () long: rows sent here beyond the K kept


def send_rows(payload: torch.Tensor, target: torch.Tensor, wanted: torch.Tensor, rows: int, capacity: int,
              keep: int) -> Received:
    """Each rank sends its wanted PAYLOAD rows to the ranks that own their TARGET rows.

    payload (R, ...); target (R,) long global index of the row each is to be paired with;
    wanted (R,) bool. The receiver keeps the first KEEP of the ``world * capacity`` slots that
    hold a row (in sender order), so that what it computes on them has a fixed size near the
    rows it actually receives rather than the size of the buffer."""
    world = world_size()
    count = payload.shape[0]
    position, placed = assign_slots(torch.div(target, rows, rounding_mode="floor"), wanted, world, capacity)
    size = world * capacity
    source = _scatter_to_slots(torch.arange(count, device=payload.device), position, size, count - 1)
    local_target = _scatter_to_slots(torch.where(placed, target % rows, -1), position, size, -1)
    arrived = all_to_all_rows(payload.index_select(0, source), CATEGORY)
    arrived_target = all_to_all_rows(local_target, CATEGORY)

    filled = arrived_target >= 0
    order = filled.long().cumsum(dim=0) - 1
    kept = filled & (order < keep)
    slot = torch.where(kept, order, torch.full_like(order, keep))
    pick = _scatter_to_slots(torch.arange(size, device=payload.device), slot, keep, 0)
    valid = _scatter_to_slots(kept, slot, keep, False)
    return Received(
        rows=arrived.index_select(0, pick),
        target=arrived_target.index_select(0, pick).clamp(min=0),
        valid=valid,
        dropped_sending=(wanted & ~placed).sum(),
        dropped_receiving=(filled & ~kept).sum(),
    )
