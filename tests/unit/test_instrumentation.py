"""training/runtime/instrumentation.py: the host-sync counter on hand-made operations, and the traffic
counter's bytes against hand-computed ring-model figures (a fake 4-rank process group: the
collectives do nothing, their sizes are what is counted)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from training.runtime.instrumentation import SyncCounter, TrafficCounter, traffic_category


def test_every_kind_of_host_sync_is_counted_once_and_nothing_else():
    x = torch.randn(6)
    mask = x > 0
    syncing = [
        lambda: x.sum().item(),
        lambda: bool(x.sum() > 0),
        lambda: float(x[0]),
        lambda: x.tolist(),
        lambda: x.numpy(),
        lambda: x.cpu(),
        lambda: x.nonzero(),
        lambda: x[mask],
        lambda: x.clone().__setitem__(mask, 0.0),
        lambda: torch.masked_select(x, mask),
        lambda: torch.unique(torch.tensor([3, 1, 3])),
        lambda: torch.repeat_interleave(torch.tensor([1, 2])),
        lambda: torch.equal(x, x),
    ]
    quiet = [
        lambda: x[torch.tensor([0, 2])],  # a long index has the shape of the index
        lambda: x.index_select(0, torch.tensor([1])),
        lambda: torch.where(mask, x, 0.0),
        lambda: x @ x,
        lambda: torch.repeat_interleave(torch.tensor([5, 6]), torch.tensor([1, 2]), output_size=3),
        lambda: torch.multinomial(x.softmax(0)[None], 1),
        lambda: x.cumsum(0).masked_fill(mask, 0.0),
        lambda: torch.arange(4).repeat_interleave(2),
    ]
    for index, operation in enumerate(syncing):
        with SyncCounter() as counter:
            operation()
        assert counter.count() == 1, (index, counter.events)
        assert counter.events[0].origin == "project" and __file__ in counter.events[0].where
    for index, operation in enumerate(quiet):
        with SyncCounter() as counter:
            operation()
        assert counter.count() == 0, (index, counter.events)


def test_cpu_tensors_count_only_when_asked_and_the_wrappers_go_away():
    original = torch.Tensor.tolist
    x = torch.randn(3)
    with SyncCounter(count_cpu=False) as counter:
        x.tolist(), x.sum().item(), x.nonzero()
    assert counter.count() == 0
    with SyncCounter() as counter:
        for _ in range(3):
            x.tolist()
    [(where, count)] = counter.summary().items()
    assert count == 3 and where.startswith(f"tolist at {__file__}:")
    assert torch.Tensor.tolist is original


@pytest.fixture
def four_fake_ranks():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=4)
    yield
    dist.destroy_process_group()


def test_collective_bytes_follow_the_ring_model(four_fake_ranks):
    with TrafficCounter() as traffic:
        with traffic_category("features"):
            dist.all_gather_single(torch.empty(12, 5), torch.ones(3, 5))  # 60 B each, 3 others
            dist.reduce_scatter_single(torch.empty(2), torch.ones(8))  # 8 B out: 3 x 8
        with traffic_category("itm_exchange"):
            dist.all_to_all_single(torch.empty(8, dtype=torch.bfloat16), torch.ones(8, dtype=torch.bfloat16))
            # rank 1 keeps its own chunk of 3 rows (24 B) of 64 B
            dist.all_to_all_single(torch.empty(8, dtype=torch.long), torch.ones(8, dtype=torch.long),
                                   [2, 2, 2, 2], [1, 3, 2, 2])
        dist.all_reduce(torch.ones(2, dtype=torch.float64))  # 16 B: 2 x 3/4 x 16
        dist.broadcast(torch.ones(10, dtype=torch.uint8), src=0)  # 3/4 x 10
        dist.all_gather([torch.empty(2) for _ in range(4)], torch.ones(2))  # 3 x 8
    features, exchange, other = (traffic.by_category[name] for name in ("features", "itm_exchange", "other"))
    assert (features.calls, features.sent, features.payload) == (2, 180 + 24, 60 + 32)
    assert (exchange.calls, exchange.sent, exchange.payload) == (2, 12 + 40, 16 + 64)
    assert (other.calls, other.sent, other.payload) == (3, 24 + 7.5 + 24, 16 + 10 + 8)
    assert "wrapper" not in dist.all_reduce.__name__


def test_a_deprecated_name_calling_the_new_one_counts_once(four_fake_ranks):
    with TrafficCounter() as traffic:
        dist.all_gather_into_tensor(torch.empty(8), torch.ones(2))  # calls all_gather_single inside
    assert (traffic.by_category["other"].calls, traffic.sent("other")) == (1, 24)


def test_object_collectives_count_through_their_tensors_and_calls_outside_are_not_recorded(four_fake_ranks):
    dist.all_reduce(torch.ones(4))
    with TrafficCounter() as traffic:
        dist.all_gather_object([None] * 4, {"a": 1})  # a size all_gather, then the pickled bytes'
    assert set(traffic.by_category) == {"other"} and traffic.by_category["other"].calls == 2
    dist.all_reduce(torch.ones(4))
    assert traffic.by_category["other"].calls == 2
