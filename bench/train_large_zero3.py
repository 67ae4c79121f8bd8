"""A few training steps of X²-VLM large (configs/model/x2vlm_large.yaml, 593M parameters) under
DeepSpeed ZeRO-3 with activation checkpointing, on 2 CPU ranks (gloo), printing each rank's
memory: the configuration large-model users need, exercised end to end on a small batch.

    python bench/train_large_zero3.py                       # 3 steps, 2 pairs + 2 region images per rank
    MALLOC_ARENA_MAX=2 python bench/train_large_zero3.py --steps 2 --image-batch 1 --region-images 1 --small-buckets

Each rank builds the model as the trainer does (every rank the same initial weights, then
`deepspeed.initialize` partitions them), with the DeepSpeed settings of
configs/deepspeed/zero3.json plus bf16 and gradient clipping, and trains on synthetic uint8
images at 224 px and 40-token texts through the full loss code (ITC, ITM with global hard
negatives, MLM, boxes). Printed per rank: the resident memory after the engine is built and
after each step, the process's peak, the loss and the step time. It takes several minutes on
a CPU and more than 7 GB of memory
per rank (6.8 GB were resident during the first step; docs/PERFORMANCE.md).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

GB = 2**30


def _resident() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GB


def _peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def _batches(rank: int, args) -> dict:
    from bench_scaling import make_batch

    return {"image": make_batch("image", args.image_batch, rank),
            "region": make_batch("region", 5 * args.region_images, rank, images=args.region_images)}


def _rank_main(rank: int, world: int, port: int, args, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    import deepspeed

    from training.model import create_model
    from training.model import load_model_config
    from training.tasks.task import Task

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    config = load_model_config(REPO_ROOT / "configs/model/x2vlm_large.yaml")
    if args.smoke:  # large widths, one vision block, one text and one fusion layer
        config.vision.timm_kwargs = {"depth": 1}
        config.text.num_layers, config.text.fusion_start = 2, 1
    config.activation_checkpointing = True
    torch.manual_seed(0)
    task = Task.for_model(create_model(config, load_pretrained=False), batches=("image", "region"))
    parameters = sum(p.numel() for p in task.parameters())
    ds_config = {**json.loads((REPO_ROOT / "configs/deepspeed/zero3.json").read_text()),
                 "train_micro_batch_size_per_gpu": args.image_batch, "gradient_accumulation_steps": 1,
                 "gradient_clipping": 1.0, "bf16": {"enabled": True}, "steps_per_print": 10**9}
    if args.small_buckets:
        # DeepSpeed's defaults size its buffers for a GPU: reduce buckets of 5e8 elements, up to
        # 1e9 parameters gathered at once, the optimizer step over sub-groups of 1e9 elements.
        # Two ranks of one CPU box share its memory, so these hold each to a tenth of that.
        ds_config["zero_optimization"] = {**ds_config["zero_optimization"], "reduce_bucket_size": 5e7,
                                          "stage3_prefetch_bucket_size": 5e6, "stage3_max_live_parameters": 1e8,
                                          "stage3_max_reuse_distance": 1e8, "sub_group_size": 1e8}
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-5, weight_decay=0.01)
    engine, _, _, _ = deepspeed.initialize(model=task, optimizer=optimizer, config=ds_config)
    for buffer in engine.module.buffers():  # as the trainer does: bf16 buffers with bf16 weights
        if buffer.is_floating_point():
            buffer.data = buffer.data.to(torch.bfloat16)
    rows = [{"rank": rank, "stage": "engine built", "resident_gb": _resident(), "peak_gb": _peak(),
             "parameters": parameters}]
    batches = _batches(rank, args)
    for step in range(1, args.steps + 1):
        started = time.perf_counter()
        outputs = engine({"image": batches["image"], "region": batches["region"]})
        engine.backward(outputs["loss"])
        engine.step()
        rows.append({"rank": rank, "stage": f"step {step}", "loss": outputs["loss"].item(),
                     "seconds": time.perf_counter() - started, "resident_gb": _resident(), "peak_gb": _peak()})
        print(json.dumps(rows[-1]), flush=True)
    Path(out, f"rank{rank}.json").write_text(json.dumps(rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--image-batch", type=int, default=2)
    parser.add_argument("--region-images", type=int, default=2)
    parser.add_argument("--smoke", action="store_true",
                        help="a check of this script in a minute: large widths, towers of one layer")
    parser.add_argument("--out", default=None, help="folder for the per-rank JSON (default: a temporary one)")
    parser.add_argument("--small-buckets", action="store_true",
                        help="ZeRO-3 buffers a tenth of DeepSpeed's defaults, so that 2 ranks fit a CPU box")
    args = parser.parse_args(argv)
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = args.out or tempfile.mkdtemp(prefix="large_zero3_")
    Path(out).mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank_main, args=(2, port, args, out), nprocs=2, join=True)
    print(f"\nX²-VLM large{' (smoke: one-layer towers)' if args.smoke else ''} under ZeRO-3 with activation checkpointing, 2 CPU ranks, per rank "
          f"{args.image_batch} image-text pairs + {args.region_images} region images at 224 px:")
    for rank in range(2):
        rows = json.loads(Path(out, f"rank{rank}.json").read_text())
        print(f"rank {rank}: {rows[0]['parameters'] / 1e6:.1f}M parameters; engine built: resident "
              f"{rows[0]['resident_gb']:.2f} GiB")
        for row in rows[1:]:
            print(f"  {row['stage']}: loss {row['loss']:.4f}, {row['seconds']:.1f} s, resident {row['resident_gb']:.2f} "
                  f"GiB, peak {row['peak_gb']:.2f} GiB")


if __name__ == "__main__":
    main()
