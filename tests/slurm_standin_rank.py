"""A stand-in for training/pretrain.py under the real Slurm template (tests/test_slurm_launch.py).

Same command line (`--config RUN.yaml [--set k=v] [--resume auto]`), same distributed start
(training.runtime.distributed.init), same pre-emption handling (training.runtime.signals) and exit code, but
a step is a sleep plus one all_reduce, so the launch wiring is tested in seconds.

Config keys: run.output_dir, run.max_steps, standin.step_seconds, guard.signals.
Writes under run.output_dir:
  attempts/rank{R}.jsonl  one line per start of this rank: host, rank env, all_reduce result,
                          the signal it received itself (null if none), first and last step
  steps.jsonl             rank 0: one line per step, {"step", "value"}, value all-reduced
  progress.json           rank 0: {"step"}, written when a signal stops the run (the "checkpoint")
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from training.runtime import distributed
from training.engine.run_config import apply_overrides
from training.runtime.signals import REQUEUE_EXIT_CODE, PreemptionHandler


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", default="auto")
    parser.add_argument("--local_rank", type=int, default=None)
    return parser.parse_args()


def all_reduce_sum(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item())


def main() -> int:
    args = parse_args()
    config = apply_overrides(yaml.safe_load(args.config.read_text()), args.overrides, str(args.config))
    out = Path(config["run"]["output_dir"])
    max_steps = int(config["run"]["max_steps"])
    step_seconds = float(config["standin"]["step_seconds"])
    handler = PreemptionHandler(config["guard"]["signals"]).install()

    rank, world_size, device = distributed.init("gloo")
    progress = out / "progress.json"
    step = json.loads(progress.read_text())["step"] if args.resume == "auto" and progress.exists() else 0
    record = {
        "host": socket.gethostname(), "rank": rank, "world_size": world_size,
        "local_rank": int(os.environ["LOCAL_RANK"]), "master_addr": os.environ["MASTER_ADDR"],
        "master_port": os.environ["MASTER_PORT"], "job_id": os.environ.get("SLURM_JOB_ID"),
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
        # Each rank adds rank+1: the sum proves every rank joined the same group.
        "rank_sum": all_reduce_sum(rank + 1), "first_step": step + 1,
    }
    steps_log = open(out / "steps.jsonl", "a", buffering=1) if rank == 0 else None
    exit_code = 0
    while step < max_steps:
        time.sleep(step_seconds)
        step += 1
        value = all_reduce_sum(step * (rank + 1))
        if steps_log:
            steps_log.write(json.dumps({"step": step, "value": value}) + "\n")
        stop, = distributed.all_reduce_flags([handler.requested], device)
        if stop:
            if rank == 0:
                tmp = progress.with_suffix(".tmp")
                tmp.write_text(json.dumps({"step": step}))
                tmp.replace(progress)
            distributed.barrier()
            exit_code = REQUEUE_EXIT_CODE
            break
    record.update(last_step=step, exit_code=exit_code,
                  signal=signal.Signals(handler.received).name if handler.received else None)
    (out / "attempts").mkdir(parents=True, exist_ok=True)
    with open(out / "attempts" / f"rank{rank}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    distributed.barrier()
    dist.destroy_process_group()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
