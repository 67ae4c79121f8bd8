"""Benchmark of masked-patch dropping (model config ``mim.drop_masked``, FLIP): time of one
forward + backward of the vision tower and the image-text contrastive loss, with 0 %, 50 % and
75 % of the patches left out, at the tiny (demo) and base shapes.

    python bench/bench_patch_drop.py                       # demo and x2vlm_base on this machine
    python bench/bench_patch_drop.py --configs x2vlm_base --batch 8 --repeats 5

The settings run in turns (one step of each, then again) so that a drift in the machine's
speed does not favour one of them; the table gives the median step time, its ratio to 0 %,
and the share of the patches each setting keeps (the ideal ratio for the transformer blocks);
beside the wall time, the process's CPU time per step, which a machine shared with other jobs
distorts less.
Masks are the block masks training draws (training/model/patch_masking.py); 0 % is the
ordinary forward over every patch. Text features are fixed random vectors: the text tower's
cost does not change with the patches dropped.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.objectives.itc import contrastive_loss
from training.model import CONFIG_DIR, load_model_config
from training.model.patch_masking import block_masks, masked_count
from training.model.vision import VisionTower


def step(tower, projection, images, text, temperature, positives, keep) -> None:
    tokens = tower(images, keep=keep)
    vision = F.normalize(projection(tokens[:, 0]), dim=-1)
    contrastive_loss(vision, text, temperature, positives).backward()


def bench(config_name: str, batch: int, ratios: list[float], repeats: int, threads: int) -> list[dict]:
    torch.manual_seed(0)
    path = Path(config_name)
    config = load_model_config(path if path.suffix else CONFIG_DIR / f"{config_name}.yaml")
    # Only the vision tower and the projection are built (the text side does not change).
    tower = VisionTower(config.vision)
    tower.enable_kept_patches()
    projection = nn.Linear(tower.width, config.embed_dim)
    size = config.vision.image_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    text = F.normalize(torch.randn(batch, config.embed_dim), dim=-1)
    temperature = torch.tensor(config.temperature)
    positives = torch.eye(batch, dtype=torch.bool)
    keeps = {}
    for ratio in ratios:
        if ratio == 0:
            keeps[ratio] = None
        else:
            count = masked_count(tower.num_patches, ratio)
            keeps[ratio] = block_masks(batch, tower.grid_size, count, "cpu").kept
    times = {ratio: [] for ratio in ratios}
    cpu = {ratio: [] for ratio in ratios}
    for ratio in ratios:  # warm-up
        step(tower, projection, images, text, temperature, positives, keeps[ratio])
    for _ in range(repeats):
        for ratio in ratios:
            tower.zero_grad(set_to_none=True)
            started, started_cpu = time.perf_counter(), time.process_time()
            step(tower, projection, images, text, temperature, positives, keeps[ratio])
            times[ratio].append(time.perf_counter() - started)
            cpu[ratio].append(time.process_time() - started_cpu)
    base, base_cpu = statistics.median(times[ratios[0]]), statistics.median(cpu[ratios[0]])
    rows = []
    for ratio in ratios:
        median, median_cpu = statistics.median(times[ratio]), statistics.median(cpu[ratio])
        kept = tower.num_patches if keeps[ratio] is None else keeps[ratio].shape[1]
        rows.append({"config": config_name, "batch": batch, "dropped": ratio, "patches": f"{kept}/{tower.num_patches}",
                     "step_s": median, "ratio": median / base, "cpu_s": median_cpu, "cpu_ratio": median_cpu / base_cpu,
                     "kept_share": kept / tower.num_patches, "threads": threads})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["demo", "x2vlm_base"], help="model configs (configs/model)")
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 4],
                        help="images per step, one per config or one for all (default 32 demo, 4 base)")
    parser.add_argument("--dropped", type=float, nargs="+", default=[0.0, 0.5, 0.75],
                        help="shares of patches left out; the first is the reference (default 0 0.5 0.75)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per setting (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(not 0 <= r < 1 for r in args.dropped):
        parser.error(f"--dropped: each share must lie in [0, 1), got {args.dropped}")
    batches = args.batch if len(args.batch) == len(args.configs) else [args.batch[0]] * len(args.configs)
    print(f"{'config':<12} {'batch':>5} {'dropped':>8} {'patches':>9} {'step s':>8} {'vs first':>9} "
          f"{'CPU s':>8} {'vs first':>9} {'kept share':>11}")
    for config_name, batch in zip(args.configs, batches):
        for row in bench(config_name, batch, args.dropped, args.repeats, torch.get_num_threads()):
            print(f"{row['config']:<12} {row['batch']:>5} {row['dropped']:>8.0%} {row['patches']:>9} "
                  f"{row['step_s']:>8.3f} {row['ratio']:>9.2f} {row['cpu_s']:>8.3f} {row['cpu_ratio']:>9.2f} "
                  f"{row['kept_share']:>11.2f}", flush=True)
    print(f"(forward + backward of the vision tower and ITC on CPU, {torch.get_num_threads()} threads, "
          f"median of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
