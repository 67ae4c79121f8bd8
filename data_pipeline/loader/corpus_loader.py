"""One corpus as a torch DataLoader whose position can be saved and restored exactly.

Each worker's batches carry that worker's stream state; the loader keeps the state that
came with the last batch it handed out from each worker. The DataLoader takes batches
from its workers in strict rotation (the streams never end, so no worker drops out), so
batch b of the corpus comes from logical worker b % num_workers; a restored loader
renumbers its physical workers so that the first one resumes the logical worker whose
turn it is.
"""
from __future__ import annotations

import copy
import multiprocessing

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import ConfigError
from ..io.shard_list import expand_shards
from ..kinds import data_kind
from ..skips import Counters
from ..spec import CorpusSpec, DataSpec
from ..text import TextEncoder
from .reshard import reshard_streams
from .stream import CorpusStream, CorpusUnusable


class WorkerTimeout(RuntimeError):
    """A corpus's DataLoader worker delivered no batch within `loader.worker_timeout_s`."""


def build_transform(corpus: CorpusSpec, spec: DataSpec):
    """The per-sample transform of CORPUS, as its kind makes it."""
    return data_kind(corpus.kind).transform(spec, corpus.options, TextEncoder(spec.text))


class CorpusDataset(IterableDataset):
    def __init__(self, corpus: CorpusSpec, urls: list[str], spec: DataSpec, rank: int, world_size: int,
                 resume_states: list[dict | None], worker_offset: int, features=None, reading=None):
        self.corpus, self.urls, self.spec = corpus, urls, spec
        self.reading = reading  # shared with the loader: the index of the shard each worker reads
        self.features = features
        self.rank, self.world_size = rank, world_size
        self.resume_states = resume_states
        self.worker_offset = worker_offset

    def __iter__(self):
        info = get_worker_info()
        physical, count = (info.id, info.num_workers) if info is not None else (0, 1)
        logical = (physical + self.worker_offset) % count
        stream = CorpusStream(self.corpus, self.urls, self.spec, self.rank, self.world_size, logical, count,
                              build_transform(self.corpus, self.spec), features=self.features)
        if self.reading is not None:
            index = {url: i for i, url in enumerate(self.urls)}
            stream.on_open = lambda url: self.reading.__setitem__(logical, index.get(url, -1))
        state = self.resume_states[logical]
        if state is not None:
            stream.load_state_dict(state)
        for batch, state in stream.batches_with_state():
            batch["_worker"], batch["_state"] = logical, state
            yield batch


def _as_is(batch):
    return batch


class CorpusLoader:
    def __init__(self, corpus: CorpusSpec, spec: DataSpec, rank: int, world_size: int, num_workers: int):
        self.corpus, self.spec = corpus, spec
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        self.workers = max(1, num_workers)
        self.urls = expand_shards(corpus.shards, where=f"corpus {corpus.name}: shards")
        if len(self.urls) < world_size * self.workers:
            raise ConfigError(
                f"corpus {corpus.name}: shards: {len(self.urls)} shards for {world_size} ranks x {self.workers} workers; "
                f"every worker needs at least one shard per epoch (write more, smaller shards or use fewer workers)")
        self.batches = 0
        self.states: list[dict | None] = [None] * self.workers
        self.features = None  # grouping's {sample key: feature}; see set_features
        # Which shard each worker is reading (an index into urls, -1: none yet), written by the
        # workers into shared memory: a stuck worker cannot say so itself.
        self._reading = multiprocessing.get_context("fork").Array("i", [-1] * self.workers, lock=False)
        self._loader = None
        self._iterator = None

    def _start(self) -> None:
        dataset = CorpusDataset(self.corpus, self.urls, self.spec, self.rank, self.world_size,
                                copy.deepcopy(self.states), self.batches % self.workers, self.features,
                                self._reading if self.num_workers > 0 else None)
        options = {}
        if self.num_workers > 0:
            options = {"prefetch_factor": self.spec.loader.prefetch_factor, "multiprocessing_context": "fork",
                       "timeout": self.spec.loader.worker_timeout_s}
        # A generator of its own: a DataLoader iterator draws its workers' base seed from the
        # generator it is given, by default torch's global one, and a loader restarted on resume
        # would then shift the trainer's random stream (ITM negatives) against an unbroken run.
        # The streams seed their own randomness, so this seed only has to be fixed.
        generator = torch.Generator().manual_seed(self.spec.seed)
        self._loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
                                  generator=generator, **options)
        self._iterator = iter(self._loader)

    def next_batch(self) -> dict:
        if self._iterator is None:
            self._start()
        try:
            batch = next(self._iterator)
        except CorpusUnusable as exn:
            # A worker's stop reaches this process wrapped in the worker's traceback text;
            # the reason is its last line.
            self.close()
            raise CorpusUnusable(str(exn).strip().splitlines()[-1].split("CorpusUnusable: ", 1)[-1]) from None
        except RuntimeError as exn:
            if "timed out" not in str(exn):  # torch's words for its `timeout`; other errors name themselves
                raise
            skipped = self.skipped()
            worker = self.batches % self.workers
            index = self._reading[worker]
            shard = f"reading {self.urls[index]}" if 0 <= index < len(self.urls) else "before its first shard"
            self.close()
            raise WorkerTimeout(
                f"corpus {self.corpus.name}: no batch from its loader workers (rank {self.rank}, worker "
                f"{worker}'s turn, {shard}) within loader.worker_timeout_s = "
                f"{self.spec.loader.worker_timeout_s:g} s: a worker is stuck reading a shard or decoding a "
                f"sample; skipped so far: {skipped or 'nothing'}") from None
        worker = batch.pop("_worker")
        if worker != self.batches % self.workers:
            raise RuntimeError(f"corpus {self.corpus.name}: batch {self.batches} came from worker {worker}, "
                               f"expected {self.batches % self.workers}")
        self.states[worker] = batch.pop("_state")
        self.batches += 1
        return batch

    def set_features(self, features) -> None:
        """The recorded features grouping uses from the next batch on. The workers start again
        from the state of the last batch handed out (as on a resume), so that batches they had
        prefetched are made again with these features: which features a batch was grouped with
        depends on the step alone, not on how far the workers had read ahead."""
        self.close()
        self.features = features

    def skipped(self) -> dict[str, int]:
        """Samples and shards skipped so far, by reason, summed over this rank's workers."""
        return Counters.total([s["counters"] for s in self.states if s is not None])

    def state_dict(self) -> dict:
        return {"batches": self.batches, "workers": copy.deepcopy(self.states)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["workers"]) != self.workers:
            raise ValueError(
                f"corpus {self.corpus.name}: state was saved with {len(state['workers'])} workers, this loader has "
                f"{self.workers}; resuming needs the same worker count and world size, because a partly "
                f"read epoch is recorded per worker (its shards, buffer and position) and cannot be "
                f"re-partitioned from one rank's state alone; use load_resharded with every rank's state")
        self.close()
        self.batches = state["batches"]
        self.states = copy.deepcopy(state["workers"])

    def load_resharded(self, states: list[dict]) -> None:
        """Continues from the states of every rank of a run with another world size or worker
        count (`states[r]` is old rank r's `state_dict()`); see reshard.py."""
        old_workers = {len(state["workers"]) for state in states}
        if len(old_workers) != 1:
            raise ValueError(f"corpus {self.corpus.name}: the old ranks' states have different worker counts "
                             f"{sorted(old_workers)}")
        old_workers = old_workers.pop()
        fresh = reshard_streams([w for state in states for w in state["workers"]], len(states), old_workers,
                                len(self.urls), self.spec.seed, self.corpus.name, self.world_size, self.workers)
        self.close()
        self.batches = 0
        self.states = fresh[self.rank * self.workers:(self.rank + 1) * self.workers]

    def close(self) -> None:
        # Dropping the iterator shuts its worker processes down.
        self._iterator = None
        self._loader = None
