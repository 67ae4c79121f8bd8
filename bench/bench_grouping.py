"""Cost of grouped mini-batches (data.grouping) on the host: the time a loader worker takes to
group one pool (greedy nearest neighbours, data_pipeline/loader/grouping.py), the time to
read a corpus's feature records at a refresh, and the disk per recorded sample.

Features are random 256-d float16 vectors (X²-VLM's embed_dim); the grouping's cost does not
depend on their values.

    python bench/bench_grouping.py [--batch 128] [--pools 4 16 64] [--records 100000]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.loader.feature_records import FeatureRecordWriter, read_features  # noqa: E402
from data_pipeline.loader.grouping import group_order, group_sizes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="samples per batch (X²-VLM's per-GPU batch)")
    parser.add_argument("--pools", type=int, nargs="+", default=[4, 16, 64], help="pool sizes, in batches")
    parser.add_argument("--width", type=int, default=256, help="feature width (embed_dim)")
    parser.add_argument("--records", type=int, default=100_000, help="records written and read back")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    for pool in args.pools:
        count = pool * args.batch
        keys = [f"sample_{i:09d}" for i in range(count)]
        features = {k: v for k, v in zip(keys, rng.normal(size=(count, args.width)).astype(np.float16))}
        times = []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            group_order(keys, features, group_sizes(count, args.batch, 0), random.Random(repeat))
            times.append(time.perf_counter() - started)
        best = min(times)
        print(f"group a pool of {pool:3d} batches x {args.batch} = {count:6d} samples: {best * 1e3:8.1f} ms "
              f"({best / count * 1e6:.1f} us per sample)")

    with tempfile.TemporaryDirectory() as folder:
        writer = FeatureRecordWriter(Path(folder), rank=0, world_size=1)
        vectors = rng.normal(size=(args.records, args.width)).astype(np.float16)
        keys = [f"laion_{i:012d}" for i in range(args.records)]
        started = time.perf_counter()
        for at in range(0, args.records, args.batch):
            writer.append("corpus", 0, at // args.batch + 1, keys[at:at + args.batch], vectors[at:at + args.batch])
        writer.flush()
        written = time.perf_counter() - started
        size = sum(writer.sizes().values())
        writer.close()
        started = time.perf_counter()
        got = read_features(Path(folder), "corpus", max_step=args.records)
        read = time.perf_counter() - started
        assert len(got) == args.records
        per_record = read / args.records
        print(f"records: {size / args.records:.0f} bytes per sample and epoch ({args.width}-d float16 + header "
              f"+ a {len(keys[0])}-character key); write {written / args.records * 1e6:.1f} us per sample, "
              f"read {per_record * 1e6:.1f} us per record (a refresh reads the records appended since the "
              f"last one; a resume all of the run's: {per_record * 4e6:.0f} s per 4M-sample epoch recorded)")


if __name__ == "__main__":
    main()
