"""One rank of tests/integration/test_host_syncs.py: builds the Trainer from a run config and
counts, with training/runtime/instrumentation.py's SyncCounter, the host synchronisations of each of
its training steps (loading the batch, forward, backward, DeepSpeed's step, the figures).

    python tests/host_syncs_rank.py RUN.yaml STEPS OUT.json

Writes {"steps": [{"project": n, "deepspeed": n, "loader": n, "project_where": {op at file:line: n},
"deepspeed_where": {...}, "loader_where": {...}}, ...]}, one entry per optimizer step.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from training.engine.run_config import load_run_config
from training.pretrain import build_trainer
from training.runtime.instrumentation import SyncCounter


def main(config_path: str, steps: int, out: str) -> None:
    trainer = build_trainer(load_run_config(Path(config_path)), "none")
    rows = []
    try:
        for _ in range(steps):
            with SyncCounter() as counter:
                trainer.train_step()
            trainer.step += 1
            origins = ("project", "deepspeed", "loader")
            rows.append({origin: counter.count(origin) for origin in origins}
                        | {f"{origin}_where": counter.summary(origin) for origin in origins})
    finally:
        trainer.close()
    Path(out).write_text(json.dumps({"steps": rows}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
