"""GRIT-VLP grouped mini-batches (Byun et al., NeurIPS 2022): batches made of mutually
similar samples, so that the in-batch negatives of ITC and ITM are hard at no extra compute.

A worker's stream puts the samples its shuffle buffer releases into a pool of
`pool_batches` batches; once the pool is full (or the epoch's last samples are in) it is
reordered by `group_order` and handed on in that order. Similarity is measured with the
features the trainer recorded for each sample key in earlier steps (feature_records.py):
a greedy search takes a seed sample and its nearest neighbours by cosine similarity for each
group in turn. Samples without a record fill the remaining places in random order.

The pool's state is the *locations* of its samples (as the shuffle buffer's is), in the
order still to be emitted once grouped, so exact resume and resharding treat them like
buffered samples. The order is a pure function of the pool's samples, their features, the
seed and the epoch.
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, Mapping

import numpy as np

Location = tuple[int, int]
Features = Mapping[str, np.ndarray]  # sample key -> feature vector (any float dtype)


def group_sizes(count: int, batch_size: int, pending: int, group_size: int = 0) -> list[int]:
    """Sizes of the groups COUNT samples are cut into so that no group straddles two batches: the
    first batch completes the one in progress (PENDING samples already in it), the last may be
    short; each batch is one group, or runs of GROUP_SIZE (the batch's last run may be short)."""
    sizes = []
    first = batch_size - pending % batch_size
    while count > 0:
        size = min(first, count)
        step = group_size or size
        sizes.extend(min(step, size - at) for at in range(0, size, step))
        count -= size
        first = batch_size
    return sizes


def group_order(keys: list[str], features: Features, sizes: list[int], rng: random.Random) -> list[int]:
    """Positions 0..len(keys)-1 reordered so that consecutive runs of `sizes` are groups of
    nearest neighbours. Greedy: each group starts from the first ungrouped sample of a random
    order and takes the ungrouped samples most similar to it (cosine of the recorded
    features; ties by that random order). Samples without a record (or with a record of
    another width than most) take the places left, in random order."""
    assert sum(sizes) == len(keys), (sizes, len(keys))
    order = list(range(len(keys)))
    rng.shuffle(order)
    with_record = [i for i in order if keys[i] in features]
    widths = [len(features[keys[i]]) for i in with_record]
    if widths:
        width = max(set(widths), key=lambda w: (widths.count(w), w))
        with_record = [i for i, w in zip(with_record, widths) if w == width]
    kept = set(with_record)
    without = [i for i in order if i not in kept]
    if len(with_record) < 2:
        return with_record + without

    matrix = np.stack([np.asarray(features[keys[i]], dtype=np.float32) for i in with_record])
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = matrix / np.where(norms > 0, norms, 1.0)
    alive = np.ones(len(with_record), dtype=bool)
    rank_in_order = np.arange(len(with_record))
    out: list[int] = []
    left = len(with_record)
    for size in sizes:
        if left == 0:
            break
        seed = int(np.flatnonzero(alive)[0])  # the first ungrouped sample of the random order
        take = min(size, left)
        similarity = matrix @ matrix[seed]
        similarity[~alive] = -np.inf
        similarity[seed] = np.inf
        # Most similar first; among equals the earlier in the random order (lexsort: last key first).
        chosen = np.lexsort((rank_in_order, -similarity))[:take]
        alive[chosen] = False
        left -= take
        out.extend(with_record[j] for j in chosen)
        if take < size:  # the featureless samples complete this group, then the rest
            break
    return out + without


class GroupingPool:
    """The pool between a worker's shuffle buffer and its transform.

    `filling` holds (location, raw sample) until the pool is full; `ready` holds those grouped
    and not yet emitted, in emission order. `pending()` tells how many samples the batch in
    progress already holds, so that the groups fall on batch boundaries."""

    def __init__(self, pool_batches: int, batch_size: int, features: Features, seed: str,
                 pending: Callable[[], int], group_size: int = 0):
        self.capacity = pool_batches * batch_size
        self.batch_size, self.group_size = batch_size, group_size
        self.features = features
        self.seed = seed  # with the epoch and the first key, seeds each pool's random order
        self.pending = pending
        self.filling: list[tuple[Location, dict]] = []
        self.ready: list[tuple[Location, dict]] = []

    def idle(self) -> bool:
        """With no features (before grouping's start_step, or before the first records) and nothing
        held, samples pass straight through: the stream is the one grouping off gives."""
        return not self.features and not self.filling and not self.ready

    def add(self, entry: tuple[Location, dict]) -> bool:
        """Takes one sample; True when the pool is full (time to `flush`)."""
        self.filling.append(entry)
        return len(self.filling) >= self.capacity

    def flush(self, epoch: int) -> Iterator[tuple[Location, dict]]:
        """Groups what the pool holds and yields it, in groups (when full, and at the end of an epoch)."""
        if self.filling:
            keys = [raw.get("__key__", "") for _, raw in self.filling]
            rng = random.Random(f"{self.seed}/{epoch}/{keys[0]}")
            sizes = group_sizes(len(keys), self.batch_size, self.pending(), self.group_size)
            order = group_order(keys, self.features, sizes, rng)
            self.ready = [self.filling[i] for i in order]
            self.filling = []
        yield from self.emit()

    def emit(self) -> Iterator[tuple[Location, dict]]:
        """Yields the grouped samples not emitted yet (first thing after a restore)."""
        while self.ready:
            # Removed before it is yielded: a state taken while the consumer holds it no longer lists it.
            entry = self.ready.pop(0)
            yield entry

    def state_dict(self) -> dict:
        return {"filling": [list(loc) for loc, _ in self.filling], "ready": [list(loc) for loc, _ in self.ready]}

    def locations(self) -> list[Location]:
        return [loc for loc, _ in self.filling] + [loc for loc, _ in self.ready]

    def load_state_dict(self, state: dict | None, found: dict) -> None:
        """FOUND: {location: raw sample} of the state's locations (fetched by the stream); a
        location that can no longer be read is dropped."""
        state = state or {"filling": [], "ready": []}
        self.filling = [(tuple(loc), found[tuple(loc)]) for loc in state["filling"] if tuple(loc) in found]
        self.ready = [(tuple(loc), found[tuple(loc)]) for loc in state["ready"] if tuple(loc) in found]
