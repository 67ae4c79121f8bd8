"""Shard-build throughput: samples/s, in total and per worker, with and without
--max-image-side 384, on a generated corpus of large JPEGs (so that resizing matters).

    python bench/bench_shard_build.py [--images 2000] [--workers 1 2]

Not a test: it prints figures. Each build runs in this process through the CLI's `main`,
worker pool start included; the corpus is generated once in a temporary directory.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.demo_corpus.drawing import encode_jpeg, render_image  # noqa: E402
from data_pipeline.demo_corpus.scenes import random_image_scene  # noqa: E402
from data_pipeline.shards import main  # noqa: E402


def write_corpus(root: Path, images: int) -> Path:
    media = root / "images"
    media.mkdir(parents=True)
    with open(root / "captions.jsonl", "w") as f:
        for index in range(images):
            # 480..640 px sides: web-crawl sizes, larger than the 384 px the resize targets.
            scene = random_image_scene(random.Random(f"bench/{index}"), min_side=480, max_side=640)
            (media / f"{index}.jpg").write_bytes(encode_jpeg(render_image(scene)))
            f.write(json.dumps({"image": f"{index}.jpg", "captions": scene.captions}) + "\n")
    return root / "captions.jsonl"


def timed_build(annotations: Path, media: Path, output: Path, workers: int, max_side: int | None) -> float:
    argv = ["build", "--format", "jsonl", "--annotations", str(annotations), "--media-root", str(media),
            "--output", str(output), "--prefix", "bench", "--samples-per-shard", "25", "--workers", str(workers), "--quiet"]
    if max_side is not None:
        argv += ["--max-image-side", str(max_side)]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"build failed: {argv}")
    return time.perf_counter() - start


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        annotations = write_corpus(root, args.images)
        print(f"corpus: {args.images} JPEGs, 480..640 px sides, {sum(p.stat().st_size for p in (root / 'images').iterdir()) / 1e6:.1f} MB")
        print(f"{'build':<28}{'workers':>8}{'seconds':>10}{'samples/s':>12}{'per worker':>12}")
        for max_side in (None, 384):
            for workers in args.workers:
                label = "pass-through" if max_side is None else f"--max-image-side {max_side}"
                seconds = timed_build(annotations, root / "images", root / f"out-{max_side}-{workers}", workers, max_side)
                rate = args.images / seconds
                print(f"{label:<28}{workers:>8}{seconds:>10.2f}{rate:>12.1f}{rate / workers:>12.1f}", flush=True)


if __name__ == "__main__":
    main_bench()
