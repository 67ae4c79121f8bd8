"""Host synchronisations of a training step: 2 real DeepSpeed ranks (CPU, gloo, ZeRO-2, bf16),
the tiny model, image, region and video batches, 2 micro-steps per optimizer step. On a CPU run
nothing waits, so training/runtime/instrumentation.py's SyncCounter counts what would make a GPU run's
host wait for the device (a read of a value, a data-dependent shape). The project's code
(loader, forward, backward, trainer) may do one per optimizer step: reading the loss figures.
DeepSpeed's own (its optimizer step's checks) are counted apart and printed. ALBEF's momentum
distillation is on (its momentum forward, queues and moving-average update add none)."""
from __future__ import annotations

import json
import sys

import yaml

from engine_support import REPO_ROOT, data_config, run_rank_scripts, write_run_config

STEPS = 3


def test_a_training_step_synchronises_the_host_once(tmp_path, engine_shards, capsys):
    config = write_run_config(tmp_path, engine_shards, max_steps=STEPS, data=data_config(engine_shards),
                              optim={"grad_accum": 2})
    run = yaml.safe_load(config.read_text())
    run["model"]["losses"]["momentum_distillation"] = {"enabled": True, "queue_size": 128}
    config.write_text(yaml.safe_dump(run, sort_keys=False))
    run_rank_scripts(REPO_ROOT / "tests/host_syncs_rank.py", str(config), str(STEPS),
                     str(tmp_path / "syncs{rank}.json"))

    for rank in range(2):
        steps = json.loads((tmp_path / f"syncs{rank}.json").read_text())["steps"]
        with capsys.disabled():
            print(f"\nrank {rank}: host syncs per optimizer step (2 micro-steps): "
                  f"project {[s['project'] for s in steps]}, DeepSpeed {[s['deepspeed'] for s in steps]}; "
                  f"DeepSpeed's: {steps[-1]['deepspeed_where']}", file=sys.stderr)
        for step in steps:
            # Exactly one: the figures' transfer (at most one is the requirement; fewer would
            # mean the counter missed it).
            assert step["project"] == 1, step["project_where"]
            [where] = step["project_where"]
            assert where.startswith("tolist at ") and "training/engine/trainer.py" in where
