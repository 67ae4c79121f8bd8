"""The training loader: every step gets one batch of each configured kind.

A kind with ratio r < 1 appears on the steps where floor((step + 1) * r) moves on, so a
video ratio of 0.5 gives a video batch every other step on every rank alike. Within a
kind the corpus is drawn by weight from the mixer's own RNG, seeded by (seed, rank).
Every rank therefore yields the same number of batches of each kind per step, however
unevenly its shards are sized: corpus streams never end (see stream.py), and an epoch of
training is a number of steps, the same on every rank.

With `grouping` on, at `grouping.start_step` and every `grouping.refresh_steps` steps after it
the mixer rereads the features the trainer recorded (feature_records.py, `feature_dir`) of the
steps up to `records_lag` before the current one, which every rank has written by then, and
hands them to its corpora's workers. The features a batch is grouped with are therefore a
function of the step, and a resume at step s rereads those of the last refresh before s: exact
resume holds.
"""
from __future__ import annotations

import logging
import math
import os
import random
from collections import Counter

from ..spec import DataSpec
from .corpus_loader import CorpusLoader
from .feature_records import FeatureSnapshot
from .shuffle import rng_state, set_rng_state

log = logging.getLogger(__name__)

STATE_VERSION = 1


def _distributed_rank_and_size() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class MixedLoader:
    def __init__(self, spec: DataSpec, rank: int | None = None, world_size: int | None = None,
                 num_workers: int | None = None, log_every: int = 1000, feature_dir: str | os.PathLike | None = None,
                 records_lag: int = 2):
        if rank is None or world_size is None:
            rank, world_size = _distributed_rank_and_size()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.spec = spec
        self.rank, self.world_size = rank, world_size
        self.num_workers = spec.loader.num_workers if num_workers is None else num_workers
        self.loaders = {c.name: CorpusLoader(c, spec, rank, world_size, self.num_workers) for c in spec.corpora}
        self.rng = random.Random(f"{spec.seed}/mixer/{rank}")
        self.step = 0
        self.drawn: Counter = Counter()
        self.log_every = log_every
        self.feature_dir, self.records_lag = feature_dir, records_lag
        self.features_at = 0  # the step whose records the corpora group with (0: none yet)
        self.snapshots: dict[str, FeatureSnapshot] = {}

    def __iter__(self):
        return self

    def kinds_at(self, step: int) -> list[str]:
        return [kind for kind in self.spec.kinds()
                if math.floor((step + 1) * self.spec.kind_ratio[kind]) > math.floor(step * self.spec.kind_ratio[kind])]

    def _refresh_features(self, restored: bool = False) -> None:
        """At a refresh step, or on a restore: the records of the last refresh point."""
        grouping = self.spec.grouping
        if not grouping.enabled or self.feature_dir is None:
            return
        # Refresh points: start_step, then every refresh_steps steps (0: no features yet).
        since = self.step - grouping.start_step
        at = self.step - since % grouping.refresh_steps if since >= 0 else 0
        if at == self.features_at and not restored:
            return
        if restored or not self.snapshots:  # read from the start: the files may have been cut back
            self.snapshots = {name: FeatureSnapshot(self.feature_dir, name) for name in self.loaders}
        self.features_at = at
        bound = at - self.records_lag
        for name, loader in self.loaders.items():
            loader.set_features(self.snapshots[name].advance(bound) if bound > 0 else {})

    def __next__(self) -> dict[str, dict]:
        self._refresh_features()
        out = {}
        for kind in self.kinds_at(self.step):
            corpora = self.spec.corpora_of(kind)
            corpus = corpora[0] if len(corpora) == 1 else self.rng.choices(corpora, [c.weight for c in corpora])[0]
            batch = self.loaders[corpus.name].next_batch()
            batch["corpus"] = corpus.name
            self.drawn[corpus.name] += 1
            out[kind] = batch
        self.step += 1
        if self.log_every and self.step % self.log_every == 0:
            log.info("data after %d steps: %s", self.step, self.stats())
        return out

    def proportions(self) -> dict[str, dict[str, float]]:
        """Realised share of each corpus among the batches of its kind so far."""
        shares = {}
        for kind in self.spec.kinds():
            names = [c.name for c in self.spec.corpora_of(kind)]
            total = sum(self.drawn[n] for n in names)
            shares[kind] = {n: (self.drawn[n] / total if total else 0.0) for n in names}
        return shares

    def stats(self) -> dict:
        """For the trainer's log: realised proportions, batches drawn, and skipped samples
        and shards per corpus and reason (this rank)."""
        return {
            "step": self.step,
            "proportions": self.proportions(),
            "batches": {name: self.drawn[name] for name in self.loaders},
            "skipped": {name: loader.skipped() for name, loader in self.loaders.items()},
        }

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "seed": self.spec.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "step": self.step,
            "rng": rng_state(self.rng),
            "drawn": dict(self.drawn),
            "corpora": {name: loader.state_dict() for name, loader in self.loaders.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {state.get('version')}, expected {STATE_VERSION}")
        if state["world_size"] != self.world_size or state["num_workers"] != self.num_workers:
            raise ValueError(
                f"data loader state was saved with world_size {state['world_size']} and num_workers "
                f"{state['num_workers']}; this run has {self.world_size} and {self.num_workers}. Resuming "
                f"mid-epoch from one rank's state needs both unchanged: each (rank, worker) holds its own share "
                f"of the epoch's shards, shuffle buffer and position, which cannot be re-partitioned from one "
                f"rank's state alone; use load_resharded with the states of every rank of the old run.")
        if state["rank"] != self.rank:
            raise ValueError(f"data loader state belongs to rank {state['rank']}, this is rank {self.rank}")
        if state["seed"] != self.spec.seed:
            raise ValueError(f"data loader state was saved with seed {state['seed']}, the spec has {self.spec.seed}")
        missing = sorted(set(self.loaders) ^ set(state["corpora"]))
        if missing:
            raise ValueError(f"data loader state and spec disagree on corpus {missing[0]!r}; "
                             f"the corpora must not change within a run")
        self.step = state["step"]
        set_rng_state(self.rng, state["rng"])
        self.drawn = Counter(state["drawn"])
        for name, loader in self.loaders.items():
            loader.load_state_dict(state["corpora"][name])
        self._refresh_features(restored=True)

    def load_resharded(self, states: list[dict]) -> None:
        """Continues a run whose world size or worker count may have changed.

        `states` are the `state_dict()` of every rank of the old run, in any order. Across
        the new ranks and workers, every sample of the epochs in progress that the old run
        had not yet yielded is yielded exactly once, and none it had yielded is yielded again
        (see reshard.py); then whole epochs go on under the new partition. With the same world
        size and worker count this is `load_state_dict(states[rank])`, exactly."""
        if not states:
            raise ValueError("load_resharded needs the data loader states of every rank of the old run; got none")
        for state in states:
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"data loader state version {state.get('version')}, expected {STATE_VERSION}")
        states = sorted(states, key=lambda state: state["rank"])
        old_world = states[0]["world_size"]
        ranks = [state["rank"] for state in states]
        if ranks != list(range(old_world)) or any(s["world_size"] != old_world for s in states):
            missing = sorted(set(range(old_world)) - set(ranks))
            raise ValueError(
                f"load_resharded needs the states of ranks 0..{old_world - 1} of the old run (world_size "
                f"{old_world}), one each; got ranks {ranks}"
                + (f" (missing {missing})" if missing else "")
                + f" with world sizes {sorted({s['world_size'] for s in states})}")
        for field in ("seed", "num_workers", "step"):
            values = sorted({repr(s[field]) for s in states})
            if len(values) != 1:
                raise ValueError(f"the old ranks' data loader states disagree on {field}: {values}")
        if states[0]["seed"] != self.spec.seed:
            raise ValueError(f"data loader state was saved with seed {states[0]['seed']}, "
                             f"the spec has {self.spec.seed}")
        for state in states:
            missing = sorted(set(self.loaders) ^ set(state["corpora"]))
            if missing:
                raise ValueError(f"data loader state of rank {state['rank']} and spec disagree on corpus "
                                 f"{missing[0]!r}; the corpora must not change within a run")
        if old_world == self.world_size and states[0]["num_workers"] == self.num_workers:
            self.load_state_dict(states[self.rank])
            return
        self.step = states[0]["step"]
        # The corpus choice goes on from a fresh, deterministic RNG. Rank 0 carries the old
        # run's totals of batches drawn (as it does those of skipped samples), so sums over
        # the ranks stay right.
        self.rng = random.Random(f"{self.spec.seed}/mixer/{self.rank}/resharded/{self.step}")
        self.drawn = sum((Counter(s["drawn"]) for s in states), Counter()) if self.rank == 0 else Counter()
        for name, loader in self.loaders.items():
            loader.load_resharded([s["corpora"][name] for s in states])
        self._refresh_features(restored=True)

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()
