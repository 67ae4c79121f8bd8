"""Grouped mini-batches (data.grouping) in the real loader: grouped batches over real shards,
exact resume with grouping on, and the epoch covered once on another world size."""
from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from data_pipeline.loader.feature_records import FeatureRecordWriter
from data_pipeline.loader.mixer import MixedLoader
from pipeline_helpers import coco_samples, data_spec, demo_tokenizer, pipeline_shards  # noqa: F401  (fixtures)
from test_pipeline_resume import assert_same_steps

WORLD, WORKERS, BATCH, POOL, REFRESH = 2, 2, 4, 3, 4


@pytest.fixture(scope="module")
def grouping_spec(demo_tokenizer, pipeline_shards):
    return data_spec(demo_tokenizer, [
        {"name": "coco", "kind": "image_text", "shards": [str(p) for p in pipeline_shards["coco"]],
         "batch_size": BATCH}], grouping={"enabled": True, "pool_batches": POOL, "refresh_steps": REFRESH})


@pytest.fixture(scope="module")
def coco_keys(demo_corpus):
    return sorted(s["__key__"] for s in coco_samples(demo_corpus))


@pytest.fixture(scope="module")
def records(coco_keys, tmp_path_factory):
    """Features as a trainer would have recorded them at step 1: two clusters (keys at even and
    odd places of the sorted keys), one key of ten left unrecorded. Returns (folder, cluster of key)."""
    root = tmp_path_factory.mktemp("records")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 8))
    cluster = {key: i % 2 for i, key in enumerate(coco_keys)}
    recorded = [k for i, k in enumerate(coco_keys) if i % 10 != 9]
    vectors = np.stack([centres[cluster[k]] + 0.2 * rng.normal(size=8) for k in recorded]).astype(np.float16)
    writer = FeatureRecordWriter(root, rank=0, world_size=1)
    writer.append("coco", 0, 1, recorded, vectors)
    writer.close()
    return root, cluster


def loader(spec, records, rank, world=WORLD, workers=WORKERS):
    # records_lag 1: the refresh at step 4 reads the records of steps up to 3.
    return MixedLoader(spec, rank=rank, world_size=world, num_workers=workers, feature_dir=records[0], records_lag=1)


def purity(batches, cluster) -> float:
    return float(np.mean([Counter(cluster[k] for k in b).most_common(1)[0][1] / len(b) for b in batches]))


def test_grouped_batches_over_real_shards_are_deterministic(grouping_spec, records, coco_keys):
    steps = 16
    first = loader(grouping_spec, records, rank=0)
    run = [next(first)["image_text"] for _ in range(steps)]
    first.close()
    # From the refresh at step 4 on the workers group with the records; before it, at random.
    # Pools grouped before the refresh, epoch ends and unrecorded keys mix some.
    settled = REFRESH + POOL * WORKERS
    grouped = [b["keys"] for b in run[settled:]]
    assert grouped and purity(grouped, records[1]) >= 0.8
    ungrouped = loader(grouping_spec, (records[0] / "none", None), rank=0)
    plain = [next(ungrouped)["image_text"]["keys"] for _ in range(steps)]
    ungrouped.close()
    assert purity(plain[settled:], records[1]) < purity(grouped, records[1])
    again = loader(grouping_spec, records, rank=0)
    assert_same_steps([{"image_text": b} for b in run], [{"image_text": next(again)["image_text"]} for _ in range(steps)])
    again.close()


def test_before_start_step_the_stream_is_the_one_grouping_off_gives(demo_tokenizer, pipeline_shards, records):
    start, steps = 2 * REFRESH, 2 * REFRESH + 16
    corpora = [{"name": "coco", "kind": "image_text", "shards": [str(p) for p in pipeline_shards["coco"]],
                "batch_size": BATCH}]
    late = data_spec(demo_tokenizer, corpora, grouping={"enabled": True, "pool_batches": POOL,
                                                        "refresh_steps": REFRESH, "start_step": start})
    grouped = loader(late, records, rank=0)
    run = [next(grouped)["image_text"] for _ in range(steps)]
    grouped.close()
    off = loader(data_spec(demo_tokenizer, corpora), records, rank=0)
    plain = [next(off)["image_text"] for _ in range(steps)]
    off.close()
    assert_same_steps([{"image_text": b} for b in run[:start]], [{"image_text": b} for b in plain[:start]])
    settled = start + POOL * WORKERS
    assert run[start]["keys"] != plain[start]["keys"]
    assert purity([b["keys"] for b in run[settled:]], records[1]) >= 0.8 > purity(
        [b["keys"] for b in plain[settled:]], records[1])


def test_restored_loader_with_grouping_yields_the_same_batches(grouping_spec, records):
    # Saved after the refresh at step 4, within a grouped pool; the uninterrupted loader goes on to
    # the end without another refresh (which restarts the workers from their states).
    total, saved_at = 2 * REFRESH, REFRESH + 1
    uninterrupted = loader(grouping_spec, records, rank=1)
    expected = [next(uninterrupted) for _ in range(total)]
    uninterrupted.close()
    first = loader(grouping_spec, records, rank=1)
    head = [next(first) for _ in range(saved_at)]
    state = json.loads(json.dumps(first.state_dict()))
    assert any(w["pool"]["filling"] or w["pool"]["ready"] for w in state["corpora"]["coco"]["workers"])
    first.close()
    restored = loader(grouping_spec, records, rank=1)
    restored.load_state_dict(state)
    tail = [next(restored) for _ in range(total - saved_at)]
    restored.close()
    assert_same_steps(expected, head + tail)


def test_resharded_run_with_grouping_covers_the_epoch_once(grouping_spec, records, coco_keys):
    world, workers = 3, 1
    seen = defaultdict(Counter)

    def record(batch):
        for key, epoch in zip(batch["keys"], batch["epochs"]):
            seen[epoch][key] += 1

    states = []
    for rank in range(WORLD):
        old = loader(grouping_spec, records, rank)
        for _ in range(5):
            record(next(old)["image_text"])
        states.append(json.loads(json.dumps(old.state_dict())))
        old.close()
    held = sum(len(w["pool"]["filling"]) + len(w["pool"]["ready"]) for s in states
               for w in s["corpora"]["coco"]["workers"])
    assert held, "the test means samples held in grouping pools when the world size changes"
    last = max(w["epoch"] for s in states for w in s["corpora"]["coco"]["workers"])
    new = [loader(grouping_spec, records, rank, world, workers) for rank in range(world)]
    for each in new:
        each.load_resharded(states)
    for _ in range(60):
        if all(w["epoch"] > last for each in new for w in each.loaders["coco"].states):
            break
        for each in new:
            record(next(each)["image_text"])
    for each in new:
        each.close()
    for epoch in range(last + 1):
        assert set(seen[epoch]) == set(coco_keys), f"epoch {epoch}: lost {sorted(set(coco_keys) - set(seen[epoch]))}"
        assert max(seen[epoch].values()) == 1, f"epoch {epoch}: a sample yielded twice"
