"""Resuming on another world size or worker count: the epochs in progress are finished with
every sample exactly once across the old and the new run, over real shards, real
DataLoader workers and simulated ranks."""
from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from data_pipeline.loader.mixer import MixedLoader
from pipeline_helpers import (coco_samples, data_spec, demo_tokenizer, mixed_spec,  # noqa: F401  (fixtures)
                              pipeline_shards, vg_samples, video_samples)
from test_pipeline_resume import assert_same_steps

OLD_WORLD, OLD_WORKERS = 2, 2


@pytest.fixture(scope="module")
def corpus_keys(demo_corpus):
    return {"coco": {s["__key__"] for s in coco_samples(demo_corpus)},
            "vg": {s["__key__"] for s in vg_samples(demo_corpus)},
            "webvid": {s["__key__"] for s in video_samples(demo_corpus)}}


def record(seen, step: dict) -> None:
    """seen[corpus][epoch] counts the keys yielded."""
    for batch in step.values():
        for key, epoch in zip(batch["keys"], batch["epochs"]):
            seen[batch["corpus"]][epoch][key] += 1


def new_seen():
    return defaultdict(lambda: defaultdict(Counter))


def run_old(spec, steps: int, seen) -> list[dict]:
    """The old run: OLD_WORLD ranks x OLD_WORKERS workers for `steps` steps; their states, through JSON."""
    states = []
    for rank in range(OLD_WORLD):
        loader = MixedLoader(spec, rank=rank, world_size=OLD_WORLD, num_workers=OLD_WORKERS)
        for _ in range(steps):
            record(seen, next(loader))
        states.append(json.loads(json.dumps(loader.state_dict())))
        loader.close()
    return states


def epochs_in_progress(states: list[dict], corpus: str) -> range:
    slots = [w for s in states for w in s["corpora"][corpus]["workers"]]
    epochs = [0 if w is None else w["epoch"] for w in slots]
    planned = [e for w in slots if w is not None for e, _ in w["plan"]]
    return range(min(epochs), max(epochs + planned) + 1)


def run_new_until_done(loaders: list[MixedLoader], last: dict[str, int], seen, max_steps: int = 80) -> int:
    """Steps every new rank alike until each slot of each corpus is past epoch last[corpus]."""
    def done():
        return all(w["epoch"] > last[name] for loader in loaders for name, corpus in loader.loaders.items()
                   for w in corpus.states)

    steps = 0
    while not done():
        for loader in loaders:
            record(seen, next(loader))
        steps += 1
        assert steps < max_steps, "the epochs in progress never ended"
    return steps


def assert_exactly_once(seen, corpus_keys, epochs: dict[str, range]) -> None:
    for name, keys in corpus_keys.items():
        for epoch in epochs[name]:
            counts = seen[name][epoch]
            assert set(counts) == keys, f"{name} epoch {epoch}: lost {sorted(keys - set(counts))}"
            twice = sorted(k for k, n in counts.items() if n > 1)
            assert not twice, f"{name} epoch {epoch}: yielded more than once: {twice}"
        # The first epoch under the new partition has begun, without duplicates.
        after = seen[name][epochs[name][-1] + 1]
        assert after and max(after.values()) == 1


@pytest.mark.parametrize("world, workers, old_steps", [
    (1, 1, 3),   # a node lost, mid epoch 0
    (3, 1, 6),   # a bigger allocation, with some old slots already in epoch 1
    (1, 2, 6),   # one rank, DataLoader workers
    (2, 0, 4),   # same world size, other worker count
    (3, 1, 1),   # early: whole shards still ahead, old workers that handed out no batch yet
])
def test_resharded_run_finishes_the_epochs_in_progress_exactly_once(mixed_spec, corpus_keys, world, workers,
                                                                    old_steps):
    seen = new_seen()
    states = run_old(mixed_spec, old_steps, seen)
    epochs = {name: epochs_in_progress(states, name) for name in corpus_keys}
    if old_steps == 6:
        assert len(epochs["coco"]) == 2, "the test means old slots in two different epochs"

    loaders = [MixedLoader(mixed_spec, rank=rank, world_size=world, num_workers=workers) for rank in range(world)]
    for loader in loaders:
        loader.load_resharded(states)
        assert loader.step == old_steps
    run_new_until_done(loaders, {name: r[-1] for name, r in epochs.items()}, seen)
    for loader in loaders:
        loader.close()
    assert_exactly_once(seen, corpus_keys, epochs)


def test_reshard_again_during_the_transition(mixed_spec, corpus_keys):
    """2x2 -> 3x1 for a few steps (mid transition) -> 1x2: still every sample once."""
    seen = new_seen()
    states = run_old(mixed_spec, 6, seen)
    epochs = {name: epochs_in_progress(states, name) for name in corpus_keys}
    middle = []
    for rank in range(3):
        loader = MixedLoader(mixed_spec, rank=rank, world_size=3, num_workers=1)
        loader.load_resharded(states)
        for _ in range(3):
            record(seen, next(loader))
        middle.append(json.loads(json.dumps(loader.state_dict())))
        loader.close()
    assert any(w["plan"] for s in middle for w in s["corpora"]["coco"]["workers"]), "not mid transition"

    loader = MixedLoader(mixed_spec, rank=0, world_size=1, num_workers=2)
    loader.load_resharded(middle)
    assert loader.step == 9
    run_new_until_done([loader], {name: r[-1] for name, r in epochs.items()}, seen)
    loader.close()
    assert_exactly_once(seen, corpus_keys, epochs)


@pytest.mark.parametrize("world, workers, rank", [(3, 1, 2), (1, 2, 0)])
def test_save_and_restore_during_the_transition_is_exact(mixed_spec, world, workers, rank):
    states = run_old(mixed_spec, 6, new_seen())
    total, saved_at = 7, 3

    uninterrupted = MixedLoader(mixed_spec, rank=rank, world_size=world, num_workers=workers)
    uninterrupted.load_resharded(states)
    expected = [next(uninterrupted) for _ in range(total)]
    uninterrupted.close()

    first = MixedLoader(mixed_spec, rank=rank, world_size=world, num_workers=workers)
    first.load_resharded(states)
    head = [next(first) for _ in range(saved_at)]
    state = json.loads(json.dumps(first.state_dict()))
    first.close()
    assert any(w["plan"] for w in state["corpora"]["coco"]["workers"]), "not mid transition"

    restored = MixedLoader(mixed_spec, rank=rank, world_size=world, num_workers=workers)
    restored.load_state_dict(state)
    tail = [next(restored) for _ in range(total - saved_at)]
    restored.close()
    assert_same_steps(expected, head + tail)


def test_same_world_size_is_the_exact_resume(mixed_spec):
    states = run_old(mixed_spec, 3, new_seen())
    exact = MixedLoader(mixed_spec, rank=1, world_size=OLD_WORLD, num_workers=OLD_WORKERS)
    exact.load_state_dict(states[1])
    via = MixedLoader(mixed_spec, rank=1, world_size=OLD_WORLD, num_workers=OLD_WORKERS)
    via.load_resharded(states)
    assert via.state_dict() == exact.state_dict() == states[1]


def test_resharding_refuses_states_that_do_not_fit(mixed_spec, demo_tokenizer, pipeline_shards):
    states = []
    for rank in range(OLD_WORLD):
        loader = MixedLoader(mixed_spec, rank=rank, world_size=OLD_WORLD, num_workers=0)
        next(loader)
        states.append(loader.state_dict())
    target = MixedLoader(mixed_spec, rank=0, world_size=3, num_workers=0)

    def changed(rank, **fields):
        out = json.loads(json.dumps(states))
        out[rank].update(fields)
        return out

    with pytest.raises(ValueError, match=r"ranks 0\.\.1 .* got ranks \[0\] \(missing \[1\]\)"):
        target.load_resharded(states[:1])
    with pytest.raises(ValueError, match=r"one each; got ranks \[0, 0\]"):
        target.load_resharded([states[0], states[0]])
    with pytest.raises(ValueError, match=r"ranks 0\.\.1 .* got ranks \[0, 1, 1\]"):
        target.load_resharded(states + [states[1]])
    # Any order of the ranks' states gives the same deal.
    target.load_resharded(states[::-1])
    in_order = MixedLoader(mixed_spec, rank=0, world_size=3, num_workers=0)
    in_order.load_resharded(states)
    assert target.state_dict() == in_order.state_dict()
    with pytest.raises(ValueError, match="got none"):
        target.load_resharded([])
    with pytest.raises(ValueError, match="disagree on seed"):
        target.load_resharded(changed(1, seed=12))
    with pytest.raises(ValueError, match="disagree on step"):
        target.load_resharded(changed(1, step=2))
    with pytest.raises(ValueError, match="saved with seed 11, the spec has 12"):
        other_seed = data_spec(demo_tokenizer, [
            {"name": c.name, "kind": c.kind, "shards": c.shards, "batch_size": c.batch_size}
            for c in mixed_spec.corpora], kinds={"video_text": {"ratio": 0.5}}, seed=12)
        MixedLoader(other_seed, rank=0, world_size=3, num_workers=0).load_resharded(states)
    bad = json.loads(json.dumps(states))
    for state in bad:
        del state["corpora"]["vg"]
    with pytest.raises(ValueError, match="disagree on corpus 'vg'"):
        target.load_resharded(bad)
    bad = json.loads(json.dumps(states))
    bad[1]["corpora"]["coco"]["workers"][0]["shards"] = 7
    with pytest.raises(ValueError, match="saved with 7 shards, the corpus now has 6"):
        target.load_resharded(bad)
    # Rank 1's coco state handed in twice, as rank 0's and rank 1's.
    bad = json.loads(json.dumps(states))
    bad[0]["corpora"]["coco"] = bad[1]["corpora"]["coco"]
    with pytest.raises(ValueError, match=r"state at \[rank, world_size, worker, num_workers\] = \[0, 2, 0, 1\] "
                                         r"was saved for \[1, 2, 0, 1\]"):
        target.load_resharded(bad)
    target.close()
