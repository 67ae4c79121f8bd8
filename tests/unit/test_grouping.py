"""Grouped mini-batches (data.grouping): the greedy grouping on hand-built clusters, the
feature record files, and the hardness figures against a loop-by-loop computation."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from data_pipeline.loader import feature_records
from data_pipeline.loader.feature_records import (FeatureRecordWriter, FeatureSnapshot, encode, read_features,
                                                  read_records, restore)
from data_pipeline.loader.grouping import GroupingPool, group_order, group_sizes
from training.objectives.hardness import drawn_similarity, itc_hardness, itm_negative_similarity

CLUSTERS, PER_CLUSTER, WIDTH, BATCH = 4, 32, 16, 8


def clustered_features(seed: int = 0) -> tuple[list[str], dict[str, np.ndarray], dict[str, int]]:
    """CLUSTERS well separated clusters of PER_CLUSTER samples: random centres plus noise of a
    quarter of their length."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, WIDTH))
    keys, features, cluster = [], {}, {}
    for c in range(CLUSTERS):
        for i in range(PER_CLUSTER):
            key = f"s{c}_{i}"
            keys.append(key)
            features[key] = (centres[c] + 0.25 * rng.normal(size=WIDTH)).astype(np.float16)
            cluster[key] = c
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)  # as a shuffle buffer would hand them over
    return [keys[i] for i in order], features, cluster


def purity(batches: list[list[str]], cluster: dict[str, int]) -> float:
    """Mean over batches of the share of the batch's most common cluster."""
    return float(np.mean([Counter(cluster[k] for k in b).most_common(1)[0][1] / len(b) for b in batches]))


def cut(keys: list[str], sizes: list[int]) -> list[list[str]]:
    out, at = [], 0
    for size in sizes:
        out.append(keys[at:at + size])
        at += size
    return out


def test_grouped_batches_hold_mostly_one_cluster_random_batches_do_not():
    keys, features, cluster = clustered_features()
    sizes = group_sizes(len(keys), BATCH, 0)
    assert sizes == [BATCH] * (len(keys) // BATCH)
    order = group_order(keys, features, sizes, random.Random(1))
    assert sorted(order) == list(range(len(keys)))  # a permutation: nothing lost or repeated
    grouped = cut([keys[i] for i in order], sizes)
    random_batches = cut(keys, sizes)
    # Each cluster (32) is a whole number of batches (8): greedy grouping makes every batch pure.
    assert purity(grouped, cluster) >= 0.95
    # Four equal clusters drawn at random: a batch's commonest cluster is about 2-4 of its 8.
    assert purity(random_batches, cluster) <= 0.6


def test_smaller_groups_are_runs_of_one_cluster_within_batches_of_several():
    keys, features, cluster = clustered_features()
    sizes = group_sizes(len(keys), BATCH, 3, group_size=2)
    # The batch in progress (3 of 8 taken) is completed by groups 2, 2, 1; then four groups a batch.
    assert sizes[:7] == [2, 2, 1, 2, 2, 2, 2] and sum(sizes) == len(keys)
    order = [keys[i] for i in group_order(keys, features, sizes, random.Random(1))]
    groups = cut(order, sizes)
    assert purity([g for g in groups if len(g) == 2], cluster) == 1.0
    batches = cut(order[5:], [BATCH] * ((len(keys) - 5) // BATCH))
    # Four groups started from four samples of a random order: batches are not one cluster.
    assert purity(batches, cluster) <= 0.75
    whole = group_sizes(len(keys), BATCH, 0)
    whole_batches = cut([keys[i] for i in group_order(keys, features, whole, random.Random(1))], whole)
    assert purity(cut(order, whole), cluster) < purity(whole_batches, cluster)


def test_grouping_is_a_function_of_its_inputs_and_seed():
    keys, features, _ = clustered_features()
    sizes = group_sizes(len(keys), BATCH, 3)
    assert sizes[0] == BATCH - 3 and sum(sizes) == len(keys) and max(sizes) == BATCH
    first = group_order(keys, features, sizes, random.Random("a"))
    assert first == group_order(keys, features, sizes, random.Random("a"))
    assert first != group_order(keys, features, sizes, random.Random("b"))


def test_samples_without_a_record_take_the_places_left_in_random_order():
    keys, features, cluster = clustered_features()
    unrecorded = set(keys[::5])
    known = {k: v for k, v in features.items() if k not in unrecorded}
    sizes = group_sizes(len(keys), BATCH, 0)
    order = [keys[i] for i in group_order(keys, known, sizes, random.Random(0))]
    assert sorted(order) == sorted(keys)
    assert set(order[len(known):]) == unrecorded
    recorded_batches = cut(order, sizes)[:len(known) // BATCH]
    assert purity(recorded_batches, cluster) >= 0.9
    # No record at all: a random order, still a permutation.
    assert sorted(group_order(keys, {}, sizes, random.Random(0))) == list(range(len(keys)))


def test_pool_groups_on_batch_boundaries_and_restores_from_locations():
    keys, features, cluster = clustered_features()
    pending = [0]
    pool = GroupingPool(pool_batches=8, batch_size=BATCH, features=features, seed="s", pending=lambda: pending[0])
    out = []
    for index, key in enumerate(keys[:70]):
        if pool.add(((0, index), {"__key__": key})):
            out += list(pool.flush(0))
    assert len(out) == 64 and len(pool.filling) == 6  # one full pool handed on, the next filling
    assert purity(cut([raw["__key__"] for _, raw in out], [BATCH] * 8), cluster) >= 0.9
    # Emission stopped half-way: the state lists what is left, in order, by location.
    pool.filling = []
    pending[0] = 5
    for index, key in enumerate(keys[:12]):
        pool.filling.append(((1, index), {"__key__": key}))
    emitted = pool.flush(0)
    first = [next(emitted) for _ in range(4)]
    state = pool.state_dict()
    assert [tuple(loc) for loc in state["ready"]] == [loc for loc, _ in pool.ready] and len(state["ready"]) == 8
    rest = [loc for loc, _ in emitted]
    restored = GroupingPool(8, BATCH, features, "s", lambda: 0)
    restored.load_state_dict(state, {(1, i): {"__key__": k} for i, k in enumerate(keys[:12])})
    assert [loc for loc, _ in restored.emit()] == rest
    assert len(first) + len(rest) == 12


def test_feature_records_round_trip_step_bound_and_torn_tail(tmp_path):
    writer = FeatureRecordWriter(tmp_path, rank=1, world_size=2)
    vectors = np.arange(12, dtype=np.float16).reshape(3, 4)
    writer.append("coco", 0, 1, ["a", "b"], vectors[:2])
    writer.append("coco", 0, 2, ["c"], vectors[2:])
    writer.append("coco", 1, 3, ["a"], -vectors[:1])
    sizes = writer.sizes()
    assert sorted(sizes) == ["coco/epoch00000.rank00001.bin", "coco/epoch00001.rank00001.bin"]
    writer.close()
    got = read_features(tmp_path, "coco", max_step=2)
    assert sorted(got) == ["a", "b", "c"] and np.array_equal(got["a"], vectors[0])
    assert np.array_equal(read_features(tmp_path, "coco", max_step=3)["a"], -vectors[0])  # the latest wins
    # A record cut short by a crash and a damaged one end the reading; the records before stay.
    path = tmp_path / "coco" / "epoch00000.rank00001.bin"
    whole = path.read_bytes()
    path.write_bytes(whole[:-3])
    assert [k for _, k, _ in read_records(path)] == ["a", "b"]
    path.write_bytes(whole[:-20] + b"garbage!" * 10)
    assert [k for _, k, _ in read_records(path)] == ["a", "b"]
    assert read_features(tmp_path, "nothing", 10) == {}


def test_a_snapshot_advanced_step_by_step_equals_one_reading(tmp_path):
    writer = FeatureRecordWriter(tmp_path, rank=0, world_size=1)
    snapshot = FeatureSnapshot(tmp_path, "coco")
    assert snapshot.advance(5) == {}
    vector = np.ones((1, 4), np.float16)
    writer.append("coco", 0, 1, ["a"], vector)
    writer.append("coco", 0, 2, ["b"], 2 * vector)
    writer.flush()
    assert sorted(snapshot.advance(5)) == ["a", "b"]
    # A record half written when the snapshot reads is read once it is whole.
    record = encode(6, "a", 3 * vector[0])
    path = writer.path("coco", 0)
    with open(path, "ab") as handle:
        handle.write(record[:7])
    assert snapshot.advance(6)["a"][0] == 1
    with open(path, "ab") as handle:
        handle.write(record[7:])
    writer.append("coco", 1, 7, ["b", "c"], np.stack([4 * vector[0], 5 * vector[0]]))
    writer.append("coco", 1, 9, ["a"], 6 * vector)  # beyond the next bound
    writer.flush()
    got = snapshot.advance(8)
    whole = read_features(tmp_path, "coco", 8)
    assert sorted(got) == sorted(whole) == ["a", "b", "c"]
    assert all(np.array_equal(got[k], whole[k]) for k in whole)
    assert [got[k][0] for k in "abc"] == [3, 4, 5]
    assert snapshot.advance(9)["a"][0] == 6
    with pytest.raises(ValueError, match="went back"):
        snapshot.advance(8)


def test_restore_cuts_files_back_to_the_checkpoint_and_removes_later_ones(tmp_path):
    for rank in range(3):
        writer = FeatureRecordWriter(tmp_path, rank=rank, world_size=3)
        writer.append("coco", 0, 1, [f"r{rank}"], np.ones((1, 4), np.float16))
        writer.close()
    checkpoint = {}
    for rank in range(3):
        checkpoint.update(FeatureRecordWriter(tmp_path, rank, 3).sizes())
    # After the checkpoint: more records, and a new epoch's file.
    for rank in range(3):
        writer = FeatureRecordWriter(tmp_path, rank=rank, world_size=3)
        writer.append("coco", 0, 2, [f"late{rank}"], np.ones((1, 4), np.float16))
        writer.append("coco", 1, 2, [f"late{rank}"], np.ones((1, 4), np.float16))
        writer.close()
    # Resumed on 2 ranks: rank 0 answers for old ranks 0 and 2, rank 1 for old rank 1.
    restore(tmp_path, checkpoint, rank=0, world_size=2)
    assert sorted(read_features(tmp_path, "coco", 10)) == ["late1", "r0", "r1", "r2"]
    restore(tmp_path, checkpoint, rank=1, world_size=2)
    assert sorted(read_features(tmp_path, "coco", 10)) == ["r0", "r1", "r2"]
    assert sorted(p.name for p in (tmp_path / "coco").iterdir()) == [
        feature_records.file_name(0, r) for r in range(3)]
    # A rank's sizes then cover the old ranks it answers for.
    assert sorted(FeatureRecordWriter(tmp_path, 0, 2).sizes()) == [
        "coco/epoch00000.rank00000.bin", "coco/epoch00000.rank00002.bin"]


def test_hardness_figures_match_a_loop():
    torch.manual_seed(0)
    vision = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    text_columns = torch.cat([text, torch.nn.functional.normalize(torch.randn(3, 8), dim=1)])
    vision_columns = torch.cat([vision, torch.nn.functional.normalize(torch.randn(3, 8), dim=1)])
    excluded = torch.zeros(5, 8, dtype=torch.bool)
    excluded[torch.arange(5), torch.arange(5)] = True
    excluded[0, 1] = excluded[:, 7] = True
    expected = []
    for rows, columns in ((vision, text_columns), (text, vision_columns)):
        for i in range(5):
            expected.append(max(float(rows[i] @ columns[j]) for j in range(8) if not excluded[i, j]))
    got = itc_hardness(vision, text, vision_columns, text_columns, excluded)
    assert got.item() == pytest.approx(sum(expected) / len(expected), abs=1e-6)

    temperature = torch.tensor(0.07)
    logits = vision @ text_columns.t() / temperature
    drawn = torch.tensor([2, 0, 5, 6, 1])
    valid = torch.tensor([True, True, False, True, True])
    back = text @ vision_columns.t() / temperature
    drawn_back = torch.tensor([3, 3, 3, 3, 3])
    valid_back = torch.ones(5, dtype=torch.bool)
    figure = itm_negative_similarity(drawn_similarity(logits, drawn, valid, temperature),
                                     drawn_similarity(back, drawn_back, valid_back, temperature))
    loop = [float(vision[i] @ text_columns[drawn[i]]) for i in range(5) if valid[i]]
    loop += [float(text[i] @ vision_columns[3]) for i in range(5)]
    assert figure.item() == pytest.approx(sum(loop) / len(loop), abs=1e-5)
    # Nothing to measure: NaN, which the trainer's mean over ranks leaves out.
    assert torch.isnan(itc_hardness(vision, text, vision_columns, text_columns, torch.ones(5, 8, dtype=torch.bool)))


def test_the_trainer_records_one_vector_per_sample_and_cuts_back_to_its_checkpoint(tmp_path):
    from types import SimpleNamespace

    from training.extensions.grouping_features import GroupingFeatures, sample_vectors

    def recorder_of_rank_0():
        recorder = GroupingFeatures()
        recorder.setup(SimpleNamespace(output_dir=tmp_path, rank=0, world_size=1))
        return recorder

    torch.manual_seed(0)
    normalise = torch.nn.functional.normalize
    # A region batch: 2 images, 3 texts (image_index 0, 1, 1); an image-text batch of 2.
    region = {"vision": normalise(torch.randn(3, 4), dim=1), "text": normalise(torch.randn(3, 4), dim=1)}
    image = {"vision": normalise(torch.randn(2, 4), dim=1), "text": normalise(torch.randn(2, 4), dim=1)}
    index = torch.tensor([0, 1, 1])
    got = sample_vectors(region, 2, index).float()
    rows = region["vision"] + region["text"]
    expected = torch.stack([normalise(rows[0], dim=0), normalise(rows[1] + rows[2], dim=0)])
    assert torch.allclose(got, expected, atol=1e-3)

    recorder = recorder_of_rank_0()
    batches = {"image_text": {"corpus": "coco", "keys": ["a", "b"], "epochs": [0, 1]},
               "region": {"corpus": "vg", "keys": ["x", "y"], "epochs": [2, 2]}}
    inputs = {"image": {}, "region": {"image_index": index}}
    recorder.stage(7, batches, inputs, {"image": image, "region": region})
    recorder.write()
    checkpoint = recorder.state_dict()
    assert sorted(checkpoint["sizes"]) == ["coco/epoch00000.rank00000.bin", "coco/epoch00001.rank00000.bin",
                                           "vg/epoch00002.rank00000.bin"]
    root = tmp_path / "grouping_features"
    assert np.allclose(read_features(root, "vg", 7)["y"], expected[1].numpy(), atol=1e-3)
    assert sorted(read_features(root, "coco", 7)) == ["a", "b"]
    # A step after the checkpoint, then a crash: the resume cuts its records away.
    recorder.stage(8, {"image_text": {"corpus": "coco", "keys": ["c"], "epochs": [1]}}, inputs,
                   {"image": {k: v[:1] for k, v in image.items()}})
    recorder.write()
    assert "c" in read_features(root, "coco", 8)
    resumed = recorder_of_rank_0()
    resumed.load_state_dict(checkpoint)
    assert sorted(read_features(root, "coco", 8)) == ["a", "b"]
