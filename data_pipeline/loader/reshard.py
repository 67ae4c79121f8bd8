"""Continuing the epoch on a different number of ranks or workers.

A run's stream states say, for every old (rank, worker) slot, what it has not read yet of
the epochs in progress: the rest of its current shard from the cursor, its later shards,
the samples its shuffle buffer (and grouping pool) held, and all of its share of any later
epoch that another slot has already begun. `reshard_streams` gathers these remainders for each epoch, from
the oldest epoch in progress to the newest, as units of reading (a shard tail, a whole
shard, single samples by index; see stream.Unit), and deals each epoch's units out over
the new slots. Each new slot reads its units of those epochs first (its transition plan)
and then continues with whole epochs under the new partition. Every sample the old run had
not yet yielded in those epochs is then read exactly once, and none it had yielded is read
again; the order differs from an unchanged run (coverage, not order).

The result is a pure function of the old states and the new (world size, workers), so
every new rank computes the same deal without talking to the others.
"""
from __future__ import annotations

from ..skips import Counters
from .stream import STATE_VERSION, Unit, epoch_shard_ids


def _units_of(state: dict, epoch: int, shards: int, seed: int, corpus: str) -> list[Unit]:
    plan = {e: units for e, units in state.get("plan", [])}
    if epoch in plan:
        return [(shard, start, tuple(picks)) for shard, start, picks in plan[epoch]]
    rank, world_size, worker, num_workers = state["slot"]
    slot, slots = rank * num_workers + worker, world_size * num_workers
    return [(i, 0, ()) for i in epoch_shard_ids(shards, seed, corpus, epoch, slot, slots)]


def _fresh_state(slot: list[int], shards: int) -> dict:
    """The state of a slot that had not handed out a batch yet."""
    return {"version": STATE_VERSION, "slot": slot, "shards": shards, "epoch": 0, "cursor": [0, 0],
            "buffer": None, "plan": [], "batches": 0, "counters": {}}


def _remainders(states: list[dict], shards: int, seed: int, corpus: str
                ) -> tuple[int, int, dict[int, dict[int, list]]]:
    """(first epoch, last epoch, {epoch: {shard id: [tail start or None, set of single indices]}})
    of what the slots have not read yet, up to the last epoch any of them has begun or planned."""
    first = min(s["epoch"] for s in states)
    last = max(max([s["epoch"]] + [e for e, _ in s.get("plan", [])]) for s in states)
    left: dict[int, dict[int, list]] = {e: {} for e in range(first, last + 1)}

    def add(state: dict, epoch: int, shard: int, start: int | None, picks) -> None:
        entry = left[epoch].setdefault(shard, [None, set()])
        if start is not None:
            if entry[0] is not None:
                raise ValueError(f"corpus {corpus}: the states of two slots both still have to read shard {shard} "
                                 f"of epoch {epoch} (slot {state['slot']}); they do not come from one run "
                                 f"at one step")
            entry[0] = start
        overlap = entry[1] & set(picks)
        if overlap:
            raise ValueError(f"corpus {corpus}: the states of two slots both still hold sample {min(overlap)} of "
                             f"shard {shard} in epoch {epoch} (slot {state['slot']}); they do not come from one "
                             f"run at one step")
        entry[1].update(picks)

    for state in states:
        own = state["epoch"]
        for epoch in range(own, last + 1):
            units = _units_of(state, epoch, shards, seed, corpus)
            if epoch > own:
                for shard, start, picks in units:
                    add(state, epoch, shard, start, picks)
                continue
            pos, index = state["cursor"]
            for shard, start, picks in units[pos:pos + 1]:
                add(state, epoch, shard, None if start is None else max(start, index),
                    [i for i in picks if i >= index])
            for shard, start, picks in units[pos + 1:]:
                add(state, epoch, shard, start, picks)
            buffered = [] if state["buffer"] is None else list(state["buffer"]["locations"])
            pool = state.get("pool")  # grouping's pool: read, not yet yielded, like the buffer
            if pool is not None:
                buffered += pool["filling"] + pool["ready"]
            for at, index in buffered:
                add(state, epoch, units[at][0], None, [index])
    return first, last, left


def reshard_streams(states: list[dict | None], old_world_size: int, old_workers: int, shards: int, seed: int,
                    corpus: str, world_size: int, num_workers: int) -> list[dict]:
    """Stream states for every new slot (index rank * num_workers + worker), from the stream
    states of every old slot (same indexing; None for a slot that had handed out no batch)."""
    if len(states) != old_world_size * old_workers:
        raise ValueError(f"corpus {corpus}: {len(states)} stream states for {old_world_size} ranks x "
                         f"{old_workers} workers")
    full = []
    for slot, state in enumerate(states):
        expected = [slot // old_workers, old_world_size, slot % old_workers, old_workers]
        if state is None:
            state = _fresh_state(expected, shards)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"corpus {corpus}: stream state version {state.get('version')}, "
                             f"expected {STATE_VERSION}")
        if state["slot"] != expected:
            raise ValueError(f"corpus {corpus}: the stream state at [rank, world_size, worker, num_workers] = "
                             f"{expected} was saved for {state['slot']}")
        if state["shards"] != shards:
            raise ValueError(f"corpus {corpus}: state of rank {expected[0]} worker {expected[2]} was saved with "
                             f"{state['shards']} shards, the corpus now has {shards}; the shard list must not "
                             f"change within a run")
        full.append(state)

    first, last, left = _remainders(full, shards, seed, corpus)
    slots = world_size * num_workers
    plans: list[list] = [[] for _ in range(slots)]
    turn = 0
    for epoch in range(first, last + 1):
        units = []
        for shard, (start, picks) in left[epoch].items():
            picks = sorted(i for i in picks if start is None or i < start)
            if start is not None or picks:
                units.append([shard, start, picks])
        # Shard tails first, then the single samples; dealt in turn, continuing across epochs.
        units.sort(key=lambda u: (u[1] is None, u[0]))
        for plan in plans:
            plan.append([epoch, []])  # every slot has an entry for every epoch of the transition
        for unit in units:
            plans[turn % slots][-1][1].append(unit)
            turn += 1

    counters = Counters.total([s["counters"] for s in full])
    out = []
    for slot in range(slots):
        state = _fresh_state([slot // num_workers, world_size, slot % num_workers, num_workers], shards)
        state.update(epoch=first, plan=plans[slot], counters=counters if slot == 0 else {})
        out.append(state)
    return out
