"""A sample shuffle buffer whose state is small: the RNG and where each buffered sample
came from, not the samples themselves.

Each entry is (location, raw sample) with location = (shard position, index in shard).
To restore, the few shards the buffered locations point at are read again (raw bytes,
no decoding) and the buffer is refilled in the same order, so the restored buffer emits
exactly what the saved one would have.
"""
from __future__ import annotations

import random
from typing import Iterator

Location = tuple[int, int]


def rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


class ShuffleBuffer:
    def __init__(self, size: int, rng: random.Random):
        self.size = size
        self.rng = rng
        self.entries: list[tuple[Location, dict]] = []

    def push(self, location: Location, sample: dict) -> tuple[Location, dict] | None:
        """Adds a sample; once the buffer is full, returns a random one in exchange."""
        if self.size <= 1:
            return location, sample
        if len(self.entries) < self.size:
            self.entries.append((location, sample))
            return None
        j = self.rng.randrange(len(self.entries))
        out = self.entries[j]
        self.entries[j] = (location, sample)
        return out

    def drain(self) -> Iterator[tuple[Location, dict]]:
        while self.entries:
            j = self.rng.randrange(len(self.entries))
            # Swap-remove keeps the draw O(1); the order stays a function of the RNG.
            self.entries[j], self.entries[-1] = self.entries[-1], self.entries[j]
            yield self.entries.pop()

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.rng), "locations": [list(loc) for loc, _ in self.entries]}

    def load_state_dict(self, state: dict, fetch) -> None:
        """`fetch(locations)` returns {location: raw sample} for the given locations."""
        set_rng_state(self.rng, state["rng"])
        locations = [tuple(loc) for loc in state["locations"]]
        found = fetch(locations)
        # A location that can no longer be read (its shard became unreadable) is dropped.
        self.entries = [(loc, found[loc]) for loc in locations if loc in found]
