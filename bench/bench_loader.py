"""Loader throughput per worker: this project's pipeline against an open_clip-style one.

Writes its own shards (640x480 JPEG scenes with captions and boxes, 256x256 MP4 clips),
then, in this one process with one torch thread (= one loader worker), measures
samples/s through the whole per-sample path: tar reading, shuffle, decode, transforms,
tokenising (and MLM masking for ours), batching.

  image-text 224  ours: one-pass tar reader, JPEG decode of the crop's rectangle only
                  (at a DCT scale when it covers 224), RandomResizedCrop(0.2-1) + flip +
                  RandAugment(2, 7), caption cleaning, tokens, MLM masks; batches of
                  uint8 pixels (CLIP normalisation is the vision tower's first step, on
                  the GPU)
                  baseline (open_clip's get_wds_dataset): webdataset decode("pilrgb"),
                  torchvision RandomResizedCrop(224, scale 0.9-1, bicubic), ToTensor,
                  Normalize, tokenizer
  region          ours: region crop + colour RandAugment + boxes + patch masks + texts
                  baseline: the same open_clip-style image path on the region shards
  video           ours: decord (in a time-limited child) 3 frames + shared crop/flip/RA
                  baseline: webdataset + PyAV decoding every frame, torchvision
                  transforms on 3 of them

    python bench/bench_loader.py [--seconds 16] [--slices 8] [--out /tmp/x2vlm-bench]
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from data_pipeline import schema  # noqa: E402
from data_pipeline.loader.corpus_loader import build_transform  # noqa: E402
from data_pipeline.demo_corpus.drawing import encode_mp4, render_image, render_video_frames  # noqa: E402
from data_pipeline.demo_corpus.scenes import random_image_scene, random_video_scene  # noqa: E402
from data_pipeline.spec import parse_data_spec  # noqa: E402
from data_pipeline.loader.stream import CorpusStream  # noqa: E402
from data_pipeline.text.demo_tokenizer import train_wordpiece  # noqa: E402
# The baseline normalises on the CPU, as a torchvision pipeline does; ours hands uint8.
from training.model.preprocessing import CLIP_MEAN, CLIP_STD  # noqa: E402


def textured(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Adds grain so the JPEG costs what a photo costs to decode, not a flat drawing."""
    array = np.asarray(image, dtype=np.int16) + rng.normal(0, 12, (image.height, image.width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def write_image_shards(out: Path, images: int, size: tuple[int, int], texts: list[str]) -> list[str]:
    noise, shards, per_shard = np.random.default_rng(0), [], 64
    width, height = size
    for start in range(0, images, per_shard):
        path = out / f"images{width}x{height}-{start // per_shard:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for i in range(start, min(start + per_shard, images)):
                scene = random_image_scene(random.Random(i), min_side=480, max_side=640)
                image = textured(render_image(scene).resize(size, Image.BICUBIC), noise)
                sx, sy = width / scene.width, height / scene.height
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                regions = [schema.region_entry([s.box[0] * sx, s.box[1] * sy, s.box[2] * sx, s.box[3] * sy], [p], s.kind)
                           for s, p in zip(scene.shapes, scene.phrases)]
                info = schema.image_info("bench", width, height, scene.captions, regions, {})
                writer.write(schema.sample_dict(f"bench_{i}", "jpg", buffer.getvalue(), info))
                texts += scene.captions + scene.phrases
        shards.append(str(path))
    return shards


def write_bench_shards(out: Path, images: int, large_images: int, videos: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    done = out / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    texts: list[str] = []
    image_shards = write_image_shards(out, images, (640, 480), texts)
    large_shards = write_image_shards(out, large_images, (1280, 960), texts)
    video_shards, per_shard = [], 16
    for start in range(0, videos, per_shard):
        path = out / f"videos-{start // per_shard:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for i in range(start, min(start + per_shard, videos)):
                scene = random_video_scene(random.Random(1000 + i), size=256)
                info = schema.video_info("bench", 256, 256, scene.captions, scene.frames / scene.fps, scene.fps,
                                         None, None, scene.frames, {})
                writer.write(schema.sample_dict(f"clip_{i}", "mp4", encode_mp4(render_video_frames(scene), scene.fps),
                                                info))
                texts += scene.captions
        video_shards.append(str(path))
    train_wordpiece(texts, out / "tokenizer", vocab_size=80)
    info = {"images": image_shards, "large_images": large_shards, "videos": video_shards,
            "tokenizer": str(out / "tokenizer")}
    done.write_text(json.dumps(info))
    return info


def ours(shards: list[str], info: dict, kind: str) -> Iterator[int]:
    """Batch sizes of this project's loader, forever."""
    spec = parse_data_spec({
        "seed": 0, "image_res": 224, "patch_size": 16, "text": {"tokenizer": info["tokenizer"]},
        "loader": {"num_workers": 1, "shuffle_buffer": 256},
        "corpora": [{"name": "bench", "kind": kind, "shards": shards, "batch_size": 16}]})
    corpus = spec.corpora[0]
    stream = CorpusStream(corpus, shards, spec, 0, 1, 0, 1, build_transform(corpus, spec))
    return (len(b["keys"]) for b, _ in stream.batches_with_state())


def clip_image_transform():
    return T.Compose([T.RandomResizedCrop(224, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      lambda image: image.convert("RGB"), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def baseline_images(shards: list[str], info: dict) -> Iterator[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(info["tokenizer"])
    preprocess = clip_image_transform()
    tokenize = lambda text: tokenizer(text, padding="max_length", truncation=True, max_length=40,  # noqa: E731
                                      return_tensors="pt")["input_ids"][0]
    dataset = (wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, empty_check=False)
               .repeat().shuffle(256).decode("pilrgb").rename(image="jpg;png;jpeg;webp", text="txt")
               .map_dict(image=preprocess, text=tokenize).to_tuple("image", "text").batched(16))
    return (len(images) for images, _ in dataset)


def pyav_frames(data: bytes) -> list[Image.Image]:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


def baseline_videos(info: dict) -> Iterator[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(info["tokenizer"])
    preprocess = clip_image_transform()

    def frames(data: bytes) -> torch.Tensor:
        decoded = pyav_frames(data)
        picks = np.linspace(0, len(decoded) - 1, 3).round().astype(int)
        return torch.stack([preprocess(decoded[i]) for i in picks])

    tokenize = lambda text: tokenizer(text.decode(), padding="max_length", truncation=True,  # noqa: E731
                                      max_length=40, return_tensors="pt")["input_ids"][0]
    dataset = (wds.WebDataset(info["videos"], shardshuffle=False, nodesplitter=None, empty_check=False)
               .repeat().shuffle(64).map_dict(mp4=frames, txt=tokenize).to_tuple("mp4", "txt").batched(16))
    return (len(clips) for clips, _ in dataset)


def measure_pair(mine: Iterator[int], base: Iterator[int], seconds: float, slices: int) -> tuple[float, float]:
    """Samples/s of both loaders, each warmed up by two batches, then run in alternating
    slices of seconds / slices / 2: a drift in the machine's speed (shared hosts) then
    touches both alike instead of skewing the ratio."""
    counts, times = [0, 0], [0.0, 0.0]
    for batches in (mine, base):
        for _ in range(2):
            next(batches)
    for _ in range(slices):
        for i, batches in enumerate((mine, base)):
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / slices / 2:
                counts[i] += next(batches)
            times[i] += time.perf_counter() - start
    return counts[0] / times[0], counts[1] / times[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=16.0,
                        help="measuring time per configuration, ours and the baseline together")
    parser.add_argument("--slices", type=int, default=8, help="alternations between ours and the baseline")
    parser.add_argument("--out", type=Path, default=Path("/tmp/x2vlm-bench"), help="where the bench shards go")
    parser.add_argument("--images", type=int, default=512, help="640x480 images")
    parser.add_argument("--large-images", type=int, default=192, help="1280x960 images")
    parser.add_argument("--videos", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one loader worker = one core
    info = write_bench_shards(args.out, args.images, args.large_images, args.videos)
    print(f"one worker, one thread; {args.seconds:.0f} s per configuration in {args.slices} alternations; samples/s")
    small, large, videos = info["images"], info["large_images"], info["videos"]
    configurations = [
        ("image-text 224, JPEG 640x480", lambda: ours(small, info, "image_text"),
         lambda: baseline_images(small, info)),
        ("image-text 224, JPEG 1280x960", lambda: ours(large, info, "image_text"),
         lambda: baseline_images(large, info)),
        ("region 224, JPEG 640x480", lambda: ours(small, info, "region"), lambda: baseline_images(small, info)),
        ("video 3x224, MP4 256x256", lambda: ours(videos, info, "video_text"), lambda: baseline_videos(info)),
    ]
    rows = [(name, *measure_pair(mine(), base(), args.seconds, args.slices)) for name, mine, base in configurations]
    print(f"{'':32}{'ours':>10}{'open_clip-style':>18}{'ratio':>8}")
    for name, mine, base in rows:
        print(f"{name:32}{mine:10.1f}{base:18.1f}{mine / base:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
