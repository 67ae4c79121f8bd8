"""What checksums cost a checkpoint: one rank's files of a model, written with plain
`torch.save` + fsync and with the trainer's hashing writer (training/checkpoint_integrity.py),
then verified as `--resume auto` verifies them (sha256 of every file + a weights-only
unpickling of each .pt file without loading its tensors).

    python bench/bench_checkpoint_hashing.py --config tiny
    python bench/bench_checkpoint_hashing.py --config x2vlm_base --dir /scratch/bench

The files hold what a ZeRO-1/2 world of one writes: the bf16 weights (model file) and the
fp32 master weights with AdamW's two moments (optimizer file). Prints seconds and MB/s for
each way, best of --repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from training.engine.checkpoint import MARKER, verify_checkpoint
from training.engine.checkpoint_integrity import save_hashed
from training.model import create_model


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def plain_save(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="model config name or YAML (configs/model/)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    model = create_model(args.config, load_pretrained=False)
    fp32 = {name: p.detach().float().clone() for name, p in model.named_parameters()}
    files = {
        "mp_rank_00_model_states.pt": {"module": {n: t.to(torch.bfloat16) for n, t in fp32.items()}},
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": {
            "fp32": list(fp32.values()), "exp_avg": [t.clone() for t in fp32.values()],
            "exp_avg_sq": [t.clone() for t in fp32.values()]},
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "step_00000001"
        folder.mkdir()
        plain = best_of(args.repeat, lambda: [plain_save(obj, folder / name) for name, obj in files.items()])
        manifest = {}
        hashed = best_of(args.repeat, lambda: manifest.update(
            {name: save_hashed(obj, folder / name) for name, obj in files.items()}))
        (folder / MARKER).write_text(json.dumps({"step": 1, "world_size": 1, "fingerprint": "bench", "files": manifest}))
        verify = best_of(args.repeat, lambda: verify_checkpoint(folder))
        megabytes = sum(record["size"] for record in manifest.values()) / 1e6
    print(f"{args.config}: {megabytes:.1f} MB in {len(files)} files")
    for what, seconds in (("torch.save + fsync", plain), ("hashed while written + fsync", hashed),
                          ("verify (sha256 + weights-only unpickling)", verify)):
        print(f"  {what:42s} {seconds:7.3f} s  {megabytes / seconds:8.0f} MB/s")
    print(f"  checksums add {hashed - plain:+.3f} s to a save ({(hashed / plain - 1) * 100:+.0f}%)")


if __name__ == "__main__":
    main()
