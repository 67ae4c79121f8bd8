"""Exact resume and exactly-once coverage, over real shards, real DataLoader workers and
two simulated ranks."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from data_pipeline.loader.mixer import MixedLoader
from data_pipeline.transforms import image_text
from pipeline_helpers import coco_samples, demo_tokenizer, mixed_spec, pipeline_shards  # noqa: F401  (fixtures)

WORLD, WORKERS = 2, 2


def assert_same_steps(expected: list[dict], actual: list[dict]) -> None:
    assert len(expected) == len(actual)
    for step, (want, got) in enumerate(zip(expected, actual)):
        assert sorted(want) == sorted(got), f"step {step}: kinds differ"
        for kind in want:
            assert sorted(want[kind]) == sorted(got[kind]), f"step {step} {kind}: fields differ"
            for name, value in want[kind].items():
                other = got[kind][name]
                if isinstance(value, torch.Tensor):
                    assert value.dtype == other.dtype and torch.equal(value, other), f"step {step} {kind}.{name}"
                else:
                    assert value == other, f"step {step} {kind}.{name}: {value} != {other}"


@pytest.mark.parametrize("rank", range(WORLD))
def test_restored_loader_yields_the_same_batches(mixed_spec, rank):
    total, saved_at = 7, 3  # 3 is not a multiple of the worker count: the worker rotation matters
    uninterrupted = MixedLoader(mixed_spec, rank=rank, world_size=WORLD, num_workers=WORKERS)
    expected = [next(uninterrupted) for _ in range(total)]
    uninterrupted.close()

    first = MixedLoader(mixed_spec, rank=rank, world_size=WORLD, num_workers=WORKERS)
    head = [next(first) for _ in range(saved_at)]
    # Through JSON: the state is plain data that any checkpoint format can hold.
    state = json.loads(json.dumps(first.state_dict()))
    first.close()

    restored = MixedLoader(mixed_spec, rank=rank, world_size=WORLD, num_workers=WORKERS)
    restored.load_state_dict(state)
    tail = [next(restored) for _ in range(total - saved_at)]
    restored.close()
    assert_same_steps(expected, head + tail)
    # The two ranks draw different samples.
    assert expected[0]["image_text"]["keys"] != []


def test_restoring_does_not_decode_skipped_samples(mixed_spec, monkeypatch):
    calls = []
    original = image_text.ImageTextTransform.__call__

    def counting(self, sample, rng):
        calls.append(sample["__key__"])
        return original(self, sample, rng)

    monkeypatch.setattr(image_text.ImageTextTransform, "__call__", counting)
    first = MixedLoader(mixed_spec, rank=1, world_size=WORLD, num_workers=0)
    for _ in range(5):
        next(first)
    state = first.state_dict()
    expected_next = next(first)["image_text"]
    assert len(calls) == 6 * 4
    calls.clear()
    restored = MixedLoader(mixed_spec, rank=1, world_size=WORLD, num_workers=0)
    restored.load_state_dict(state)
    batch = next(restored)["image_text"]
    assert batch["keys"] == expected_next["keys"] and torch.equal(batch["images"], expected_next["images"])
    assert calls == batch["keys"]  # exactly the batch's own samples were transformed


def test_each_sample_once_per_epoch_across_ranks_and_workers(mixed_spec, demo_corpus):
    all_keys = {s["__key__"] for s in coco_samples(demo_corpus)}
    seen = {0: Counter(), 1: Counter()}
    batches_per_rank = []
    for rank in range(WORLD):
        loader = MixedLoader(mixed_spec, rank=rank, world_size=WORLD, num_workers=WORKERS)
        coco = loader.loaders["coco"]
        steps = 0
        # Until every worker of this rank has finished epoch 0.
        while not (all(s is not None and s["epoch"] >= 1 for s in coco.states)):
            batch = next(loader)["image_text"]
            steps += 1
            for key, epoch in zip(batch["keys"], batch["epochs"]):
                seen[epoch][key] += 1
            assert steps < 60, "epoch 0 never ended"
        batches_per_rank.append(coco.batches)
        loader.close()
    assert set(seen[0]) == all_keys, f"lost: {sorted(all_keys - set(seen[0]))}"
    assert max(seen[0].values()) == 1, f"duplicated: {[k for k, n in seen[0].items() if n > 1]}"
    assert max(seen[1].values()) == 1
    assert sum(seen[0].values()) == len(all_keys) == 60


def test_resume_with_other_world_size_or_workers_is_refused(mixed_spec):
    loader = MixedLoader(mixed_spec, rank=0, world_size=WORLD, num_workers=0)
    next(loader)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="world_size 2 and num_workers 0; this run has 1 and 0"):
        MixedLoader(mixed_spec, rank=0, world_size=1, num_workers=0).load_state_dict(state)
    with pytest.raises(ValueError, match="cannot be re-partitioned"):
        MixedLoader(mixed_spec, rank=0, world_size=WORLD, num_workers=1).load_state_dict(state)


def test_starting_or_restoring_the_loader_leaves_torch_global_random_stream_alone(mixed_spec):
    # The trainer draws ITM negatives from torch's global generator; a loader that consumed it
    # when its workers start (as on every resume) would shift that stream against an unbroken run.
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    loader = MixedLoader(mixed_spec, rank=0, world_size=WORLD, num_workers=WORKERS)
    next(loader)
    loader.load_state_dict(loader.state_dict())
    next(loader)
    loader.close()
    assert torch.equal(torch.rand(4), expected)
