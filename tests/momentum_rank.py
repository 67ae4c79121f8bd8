"""One rank of tests/integration/test_momentum_distillation.py: for each ZeRO stage given, builds
the Trainer with momentum distillation on, trains STEPS steps and, after every step, gathers the
trained weights as the model computes with them (DeepSpeed's own gather: the test's view, not
the teacher's) to compute their moving average independently, in float64. At the end it writes
per stage: the largest difference between that average and (a) the momentum copy's fp32 average
(the teacher's per-rank parts, made whole), (b) the momentum copy's compute-dtype weights as
DeepSpeed gathers them; and whether any momentum parameter is in an optimizer group.

    python tests/momentum_rank.py RUN.yaml STEPS OUT.json STAGE [STAGE ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def gathered(params):
    """The whole value of each parameter, as the model computes with it (any ZeRO stage)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return [param.detach().double().clone() for param in params]


def whole_averages(teacher) -> dict[str, torch.Tensor]:
    """The teacher's fp32 averages, every rank's parts laid end to end (ZeRO-3)."""
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, teacher.state_dict())
    partitioned = set(states[0]["partitioned"])
    out = {}
    for name, param in zip(teacher.names, teacher.copies):
        if name in partitioned:
            out[name] = torch.cat([state["average"][name] for state in states])[:param.ds_numel].view(param.ds_shape)
        else:
            out[name] = states[0]["average"][name].view(param.shape)
    return out


def run(config_path: str, steps: int, stage: int) -> dict:
    from training.engine.run_config import load_run_config
    from training.pretrain import build_trainer

    config = load_run_config(Path(config_path), [f"deepspeed.zero_optimization.stage={stage}",
                                                 f"run.output_dir={Path(config_path).parent / f'out{stage}'}"])
    trainer = build_trainer(config, "none")
    try:
        teacher = trainer.extension("momentum_distillation")
        coefficient = teacher.coefficient
        # The module parameters each ZeRO optimizer keeps a master copy of and steps.
        optimizer = trainer.engine.optimizer
        groups = getattr(optimizer, "bit16_groups", None) or getattr(optimizer, "fp16_groups")
        optimized = {id(p) for group in groups for p in group}
        assert any(id(p) in optimized for p in teacher.trained)  # the check can see a stepped parameter
        in_optimizer = any(id(p) in optimized for p in teacher.copies) or any(p.requires_grad for p in teacher.copies)
        initial = gathered(teacher.trained)
        expected = initial  # the copy starts equal to the weights it copies
        start = teacher.settings.start_step
        for step in range(steps):
            trainer.train_step()
            trainer.step += 1
            current = gathered(teacher.trained)
            if step + 1 == start:  # the copy restarts as the weights after step START
                expected = current
            elif step + 1 > start:
                expected = [coefficient * e + (1 - coefficient) * w for e, w in zip(expected, current)]
        averages = whole_averages(teacher)
        weights = gathered(teacher.copies)
        return {
            # the fp32 average against the independent one
            "average_error": max((averages[n].double() - e).abs().max().item()
                                 for n, e in zip(teacher.names, expected)),
            # the compute-dtype copy: the average rounded (relative error, bf16 has 8 bits)
            "weight_error": max(((w - e).abs() / (e.abs() + 1e-6)).max().item() for w, e in zip(weights, expected)),
            # how far the average is from the current and from the initial weights: neither copy would pass
            "lag": max((e - w).abs().max().item() for e, w in zip(expected, current)),
            "drift": max((e - w).abs().max().item() for e, w in zip(expected, initial)),
            "in_optimizer": in_optimizer,
            "partitioned": len(teacher.state_dict()["partitioned"]),
        }
    finally:
        trainer.close()


def main(config_path: str, steps: int, out: str, stages: list[int]) -> None:
    results = {stage: run(config_path, steps, stage) for stage in stages}
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], [int(s) for s in sys.argv[4:]])
