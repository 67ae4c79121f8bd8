"""Samples and shards the pipeline skips: the signal that skips one (`BadSample`) and the
per-corpus counts of skips by reason (`Counters`)."""
from __future__ import annotations

from collections import Counter


class BadSample(ValueError):
    """A sample to skip; `reason` is the counter it is reported under."""

    def __init__(self, reason: str, detail: str = "", dropped: tuple[str, ...] = ()):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        # Reasons of the parts (texts, boxes) dropped before the whole sample was given up;
        # each is counted too.
        self.dropped = tuple(dropped)


class Counters:
    def __init__(self, counts: dict[str, int] | None = None):
        self.counts: Counter = Counter(counts or {})

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    @staticmethod
    def total(snapshots: list[dict[str, int]]) -> dict[str, int]:
        """Sums the latest snapshots of several workers."""
        total: Counter = Counter()
        for snapshot in snapshots:
            total.update(snapshot)
        return dict(sorted(total.items()))
