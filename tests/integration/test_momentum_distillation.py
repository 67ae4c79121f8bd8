"""ALBEF momentum distillation under DeepSpeed: 2 real ranks (CPU, gloo, bf16), the tiny model,
image, region and video batches. One launch trains under ZeRO-2, then ZeRO-3, with
`model.losses.momentum_distillation` on from the second step (start_step 1); after k steps the
momentum copy must equal the moving average, from the weights after step 1, of the trained
weights that the test computes itself (tests/momentum_rank.py), on
every rank's part, without the momentum copy ever being in an optimizer group."""
from __future__ import annotations

import json

import yaml

from engine_support import REPO_ROOT, data_config, run_rank_scripts, write_run_config

STEPS = 4
MOMENTUM = 0.5  # a far-moving average: a copy that did not follow, or followed at once, fails
START = 1  # the copy restarts as the weights after the first step (start_step)


def test_momentum_copy_is_the_moving_average_of_the_weights_under_zero2_and_zero3(tmp_path, engine_shards):
    config = write_run_config(tmp_path, engine_shards, max_steps=STEPS, data=data_config(engine_shards),
                              optim={"lr": 0.01, "warmup_steps": 0})
    run = yaml.safe_load(config.read_text())
    run["model"]["losses"]["momentum_distillation"] = {"enabled": True, "momentum": MOMENTUM, "queue_size": 64,
                                                       "alpha_ramp_steps": 2, "start_step": START}
    config.write_text(yaml.safe_dump(run, sort_keys=False))

    run_rank_scripts(REPO_ROOT / "tests/momentum_rank.py", str(config), str(STEPS),
                     str(tmp_path / "momentum{rank}.json"), "2", "3")

    for rank in range(2):
        results = json.loads((tmp_path / f"momentum{rank}.json").read_text())
        print(f"rank {rank}: {results}")
        for stage in ("2", "3"):
            result = results[stage]
            assert not result["in_optimizer"], (stage, result)
            # The average is far from both the current and the initial weights, and the copy's is
            # that average to fp32 rounding, its bf16 weights to bf16 rounding.
            assert result["lag"] > 1e-3 and result["drift"] > 1e-3, (stage, result)
            assert result["average_error"] < 1e-5, (stage, result)
            assert result["weight_error"] <= 2 ** -8, (stage, result)
        assert results["3"]["partitioned"] > 0  # ZeRO-3 did partition some momentum parameters
