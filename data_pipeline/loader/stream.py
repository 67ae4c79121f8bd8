"""One corpus as one (rank, worker) reads it: shards -> shuffle buffer -> transform -> batches.

Which samples a worker sees, and in which order, is a pure function of
(seed, corpus, epoch, rank, worker):
  * epoch e's shard order is a shuffle seeded by (seed, corpus, e); the slot
    rank * num_workers + worker takes every (world_size * num_workers)-th shard of it, so
    each shard belongs to exactly one slot per epoch;
  * the shuffle buffer's RNG is seeded by (seed, corpus, e, rank, worker);
  * each sample's augmentation and masking RNG is seeded by (seed, corpus, e, key).
The stream never ends: after its last shard a worker drains its buffer and begins
epoch e + 1 with a fresh shard shuffle. Its state (epoch, shard cursor, buffer RNG and
the locations of the buffered samples, counters) is a few kilobytes, and restoring it
re-reads only the shards the buffer points at, without decoding what it skips.

After a change of world size or worker count (reshard.py) a slot first reads a plan: for
each epoch then in progress, the units of reading (shard tails, whole shards, single
samples) dealt to it; the plan is part of its state until read, then whole epochs go on.

With grouping on (the data spec's `grouping`, grouping.py), the samples the shuffle buffer
releases pass through a pool of batches that is reordered into groups of similar samples
before the transform; the pool's locations are part of the state, like the buffer's.

Evaluation mode (the data spec's `training: false`) reads one pass over the slot's shards in
their stored order, without a shuffle buffer, through the transforms' evaluation mode (no
augmentation; every text of a sample) into the evaluation collates, optionally stopping
after `max_samples` samples.
"""
from __future__ import annotations

import logging
import random
import traceback
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import Callable, Iterator

from ..io.shard_reader import COUNT_NOTHING, read_shard
from ..kinds import data_kind
from ..skips import BadSample, Counters
from ..spec import CorpusSpec, DataSpec
from .grouping import Features, GroupingPool
from .shuffle import ShuffleBuffer

log = logging.getLogger(__name__)

STATE_VERSION = 1


class CorpusUnusable(RuntimeError):
    """A corpus a worker cannot make batches from: every shard unreadable, or most samples bad."""


class SkipWindow:
    """The skip reasons of the last `size` samples read (None for a sample used), and
    whether more than `max_fraction` of them were skipped."""

    def __init__(self, size: int, max_fraction: float):
        self.reasons: deque = deque(maxlen=size)
        self.max_fraction = max_fraction
        self.skipped = 0

    def add(self, reason: str | None) -> bool:
        """Records one sample; True when the window is full and over the limit."""
        full = len(self.reasons) == self.reasons.maxlen
        if full and self.reasons[0] is not None:
            self.skipped -= 1
        self.reasons.append(reason)
        self.skipped += reason is not None
        return len(self.reasons) == self.reasons.maxlen and self.skipped > self.max_fraction * len(self.reasons)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(r for r in self.reasons if r is not None).most_common())


# A unit of reading: (shard id, start, picks) reads the shard `urls[shard id]` from index
# `start` to its end (nothing when `start` is None) plus the single samples at the indices
# `picks` (each below `start`). A normal epoch is made of whole shards, (id, 0, ()); a
# transition after a change of world size (see reshard.py) also has shard tails and the
# single samples an old shuffle buffer held.
Unit = tuple[int, "int | None", tuple[int, ...]]


def epoch_shard_ids(shards: int, seed: int, corpus: str, epoch: int, slot: int, slots: int) -> list[int]:
    """Ids (positions in the corpus's shard list) of the shards a slot reads in an epoch."""
    order = list(range(shards))
    random.Random(f"{seed}/{corpus}/shards/{epoch}").shuffle(order)
    return order[slot::slots]


def failure_site(error: BaseException) -> str:
    """Where in the data pipeline ERROR was raised, as `module.function` (`transforms.region._training`):
    the counter of an unforeseen failure says which step of which transform met the sample."""
    package = Path(__file__).resolve().parents[1]
    site = "unknown"
    for frame in traceback.extract_tb(error.__traceback__):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(package):
            site = ".".join(path.relative_to(package).with_suffix("").parts + (frame.name,))
    return site


class CorpusStream:
    def __init__(self, corpus: CorpusSpec, urls: list[str], spec: DataSpec, rank: int, world_size: int,
                 worker: int, num_workers: int, transform: Callable[[dict, random.Random], dict],
                 passes: int | None = None, max_samples: int | None = None, features: Features | None = None):
        """`passes=None` streams forever (training); a number stops after that many epochs
        and yields the last, partial batch (evaluation, audits); in evaluation mode it is 1.
        `max_samples` stops after that many samples have been batched. `features` (sample key
        -> recorded feature) are what grouping measures similarity with, when it is on."""
        slots = world_size * num_workers
        if len(urls) < slots:
            raise ValueError(
                f"corpus {corpus.name}: {len(urls)} shards for {world_size} ranks x {num_workers} workers; every "
                f"worker needs at least one shard per epoch (write more, smaller shards or use fewer workers)")
        self.corpus, self.urls, self.spec = corpus, urls, spec
        # Told the URL of every shard as it is opened (the loader notes which shard each worker
        # reads, to name it when a worker is stuck).
        self.on_open: Callable[[str], None] | None = None
        self.rank, self.world_size, self.worker, self.num_workers = rank, world_size, worker, num_workers
        self.slot, self.slots = rank * num_workers + worker, slots
        self.transform = transform
        self.evaluation = not spec.training
        self.passes = 1 if self.evaluation and passes is None else passes
        self.max_samples = max_samples
        kind = data_kind(corpus.kind)
        self.collate = kind.eval_collate if self.evaluation else kind.collate
        self.counters = Counters()
        self.window = SkipWindow(spec.loader.bad_sample_window, spec.loader.max_bad_fraction)
        self.barren: set[int] = set()  # shard ids read since the last sample arrived, none giving one
        self.epoch = 0
        self.cursor = (0, 0)  # (position in this epoch's shard list, next sample index in that shard)
        self.batches = 0
        self.buffer = self._new_buffer(0)
        self.pending = 0  # samples in the batch being filled
        grouping = spec.grouping
        self.pool = None
        if grouping.enabled and not self.evaluation:
            self.pool = GroupingPool(grouping.pool_batches, corpus.batch_size, features or {},
                                     f"{spec.seed}/{corpus.name}/grouping/{rank}/{worker}", lambda: self.pending,
                                     grouping.group_size)
        # Epochs read from explicit units instead of this slot's share of whole shards: the
        # transition after a change of world size. Empty in a run that never changed it.
        self.plan: dict[int, list[Unit]] = {}

    def _new_buffer(self, epoch: int) -> ShuffleBuffer:
        seed = f"{self.spec.seed}/{self.corpus.name}/buffer/{epoch}/{self.rank}/{self.worker}"
        return ShuffleBuffer(0 if self.evaluation else self.spec.loader.shuffle_buffer, random.Random(seed))

    def shard_ids(self, epoch: int) -> list[int]:
        if self.evaluation:  # stored order
            return list(range(self.slot, len(self.urls), self.slots))
        return epoch_shard_ids(len(self.urls), self.spec.seed, self.corpus.name, epoch, self.slot, self.slots)

    def units(self, epoch: int) -> list[Unit]:
        if epoch in self.plan:
            return self.plan[epoch]
        return [(i, 0, ()) for i in self.shard_ids(epoch)]

    def _read(self, url: str, start: int, count_from: int | None = None):
        if self.on_open is not None:
            self.on_open(url)
        loader = self.spec.loader
        return read_shard(url, start, self.counters, loader.shard_retries, loader.retry_delay_s,
                          loader.max_member_bytes, count_from, loader.shard_read_timeout_s or None)

    def _read_unit(self, unit: Unit, begin: int) -> Iterator[tuple[int, dict]]:
        """(index, raw sample) of the unit's samples at index >= begin."""
        shard, start, picks = unit
        wanted = [i for i in picks if i >= begin]
        tail = None if start is None else max(start, begin)
        if not wanted and tail is None:
            return
        first = wanted[0] if wanted else tail
        last = wanted[-1] if wanted else None
        singles = set(wanted)
        # The single samples were read (and their skipped members counted) by the worker whose
        # buffer held them; only the tail is new reading.
        for index, raw in self._read(self.urls[shard], first, COUNT_NOTHING if tail is None else tail):
            if index in singles or (tail is not None and index >= tail):
                yield index, raw
            if tail is None and index >= last:
                break

    def raw_samples(self) -> Iterator[tuple[int, dict]]:
        """(epoch, raw sample) in shuffled order, forever."""
        while True:
            units = self.units(self.epoch)
            pos, start = self.cursor
            if self.pool is not None:  # the rest of a grouped pool first (after a restore)
                for _, raw in self.pool.emit():
                    yield self.epoch, raw
            while pos < len(units):
                barren = True
                for index, raw in self._read_unit(units[pos], start):
                    barren = False
                    self.barren.clear()
                    self.cursor = (pos, index + 1)
                    out = self.buffer.push((pos, index), raw)
                    if out is not None:
                        yield from self._through_pool(out)
                if barren and start == 0 and units[pos][1] == 0:  # a whole shard read, and no sample in it
                    self.barren.add(units[pos][0])
                pos, start = pos + 1, 0
                self.cursor = (pos, 0)
            for out in self.buffer.drain():
                yield from self._through_pool(out)
            if self.pool is not None:  # the epoch's last, partial pool
                for _, raw in self.pool.flush(self.epoch):
                    yield self.epoch, raw
            # A worker whose shards of one epoch all fail goes on to the next epoch's; once it has
            # tried every shard of the corpus without a sample, no epoch will give it one. (An
            # evaluation pass ends by itself; its caller judges an empty result.)
            if not self.evaluation and len(self.barren) == len(self.urls):
                raise CorpusUnusable(
                    f"corpus {self.corpus.name}: rank {self.rank} worker {self.worker} read no sample from any of "
                    f"the corpus's {len(self.urls)} shards (epoch {self.epoch}); skipped so far: "
                    f"{self._counts()}")
            self.plan.pop(self.epoch, None)
            self.epoch += 1
            self.cursor = (0, 0)
            self.buffer = self._new_buffer(self.epoch)
            if self.passes is not None and self.epoch >= self.passes:
                return

    def _through_pool(self, entry) -> Iterator[tuple[int, dict]]:
        if self.pool is None or self.pool.idle():
            yield self.epoch, entry[1]
            return
        if self.pool.add(entry):
            for _, raw in self.pool.flush(self.epoch):
                yield self.epoch, raw

    def batches_with_state(self) -> Iterator[tuple[dict, dict]]:
        """(batch, stream state right after it), forever. Bad samples are counted, not batched."""
        pending: list[dict] = []
        batched = 0
        for epoch, raw in self.raw_samples():
            key = raw.get("__key__", "")
            rng = random.Random(f"{self.spec.seed}/{self.corpus.name}/{epoch}/{key}")
            try:
                item = self.transform(raw, rng)
            except BadSample as bad:
                for reason in bad.dropped:  # texts or boxes dropped before the sample was refused
                    self.counters.add(reason)
                self._skip(bad.reason)
                log.debug("corpus %s: skipped %s: %s", self.corpus.name, key, bad)
                continue
            except Exception as exn:  # an unforeseen failure of one sample must not stop the run
                where = failure_site(exn)
                self._skip(f"error_{type(exn).__name__}@{where}")
                log.warning("corpus %s: skipped %s: %s in %s: %s (members: %s)", self.corpus.name, key,
                            type(exn).__name__, where, exn, ", ".join(sorted(k for k in raw if not k.startswith("__"))))
                continue
            self.window.add(None)
            for reason in item.pop("skipped", ()):  # texts or boxes dropped from a kept sample
                self.counters.add(reason)
            item["epoch"] = epoch
            pending.append(item)
            self.pending = len(pending)
            batched += 1
            if len(pending) == self.corpus.batch_size:
                batch = self.collate(pending)
                batch["epochs"] = [s["epoch"] for s in pending]
                pending = []
                self.pending = 0
                self.batches += 1
                yield batch, self.state_dict()
            if batched == self.max_samples:
                break
        if pending:
            batch = self.collate(pending)
            batch["epochs"] = [s["epoch"] for s in pending]
            self.batches += 1
            yield batch, self.state_dict()

    def _counts(self) -> str:
        return ", ".join(f"{reason} {n}" for reason, n in self.counters.as_dict().items()) or "nothing"

    def _skip(self, reason: str) -> None:
        self.counters.add(reason)
        if self.window.add(reason):
            loader = self.spec.loader
            size = len(self.window.reasons)
            found = ", ".join(f"{r} {n}" for r, n in self.window.by_reason().items())
            raise CorpusUnusable(
                f"corpus {self.corpus.name}: {self.window.skipped} of the last {size} samples read by rank "
                f"{self.rank} worker {self.worker} were skipped, more than loader.max_bad_fraction = "
                f"{loader.max_bad_fraction} of loader.bad_sample_window = {loader.bad_sample_window} ({found}); "
                f"skipped so far: {self._counts()}")

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "slot": [self.rank, self.world_size, self.worker, self.num_workers],
            "shards": len(self.urls),
            "epoch": self.epoch,
            "cursor": list(self.cursor),
            "buffer": self.buffer.state_dict(),
            # Grouping's pool: absent with grouping off, so that such states stay as they were.
            **({"pool": self.pool.state_dict()} if self.pool is not None else {}),
            "plan": [[epoch, [[shard, start, list(picks)] for shard, start, picks in units]]
                     for epoch, units in sorted(self.plan.items())],
            "batches": self.batches,
            "counters": self.counters.as_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        where = f"corpus {self.corpus.name}, rank {self.rank}, worker {self.worker}"
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{where}: stream state version {state.get('version')}, expected {STATE_VERSION}")
        slot = [self.rank, self.world_size, self.worker, self.num_workers]
        if state["slot"] != slot:
            raise ValueError(f"{where}: state was saved for [rank, world_size, worker, num_workers] = "
                             f"{state['slot']}, this stream is {slot}")
        if state["shards"] != len(self.urls):
            raise ValueError(f"{where}: state was saved with {state['shards']} shards, the corpus now has "
                             f"{len(self.urls)}; the shard list must not change within a run")
        self.epoch = state["epoch"]
        self.cursor = tuple(state["cursor"])
        self.batches = state["batches"]
        self.counters = Counters(state["counters"])
        # A state without a plan (saved before plans existed) reads whole shards, as then.
        self.plan = {epoch: [(shard, start, tuple(picks)) for shard, start, picks in units]
                     for epoch, units in state.get("plan", [])}
        self.buffer = self._new_buffer(self.epoch)
        shards = [self.urls[shard] for shard, _, _ in self.units(self.epoch)]
        pool = state.get("pool")
        if pool is not None and self.pool is None and (pool["filling"] or pool["ready"]):
            raise ValueError(f"{where}: the state holds samples in a grouping pool but data.grouping is off; "
                             f"turn it on to resume this state (they would be lost)")
        # The pool's samples are fetched in the same pass as the buffer's.
        pooled = [] if pool is None else [tuple(loc) for loc in pool["filling"] + pool["ready"]]
        found = {}
        if state["buffer"] is not None or pooled:
            buffered = [] if state["buffer"] is None else [tuple(loc) for loc in state["buffer"]["locations"]]
            found = self._fetch(shards, buffered + pooled)
        if state["buffer"] is not None:  # None: a fresh buffer (the start of a transition)
            self.buffer.load_state_dict(state["buffer"], lambda locations: found)
        if self.pool is not None:
            self.pool.load_state_dict(pool, found)

    def _fetch(self, shards: list[str], locations: list[tuple[int, int]]) -> dict:
        """Raw samples at the given (position in the epoch's units, index) locations, reading
        each shard only from its first wanted sample to its last."""
        wanted: dict[int, set[int]] = defaultdict(set)
        for pos, index in locations:
            wanted[pos].add(index)
        found = {}
        for pos, indices in sorted(wanted.items()):
            last = max(indices)
            for index, raw in self._read(shards[pos], min(indices), COUNT_NOTHING):  # counted when first read
                if index in indices:
                    found[(pos, index)] = raw
                if index >= last:
                    break
        return found
