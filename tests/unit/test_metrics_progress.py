"""The trainer's console and metrics figures: FLOPs counted once per set of batch kinds, MFU,
the progress line, and the logging every command sets up."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from training.engine import metrics as metrics_module
from training.engine import progress as progress_module
from training.engine.metrics import MetricsLogger, StepFlops
from training.engine.progress import Progress, format_seconds


def test_step_flops_counts_forward_and_backward_once_per_set_of_kinds():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    flops = StepFlops()
    with flops.counting({"image", "region"}):
        layer(x).sum().backward()
    # Forward 2*B*in*out; backward the same twice more (gradients of the input and the weight).
    assert flops.of({"region", "image"}) == 3 * 2 * 5 * 4 * 3
    assert flops.of({"image"}) is None
    with flops.counting({"image", "region"}):  # known: not counted again
        torch.nn.Linear(4, 300)(x).sum().backward()
    assert flops.of({"image", "region"}) == 360


def test_tflops_and_mfu_come_from_the_flops_of_the_window(tmp_path, monkeypatch):
    clock = iter([100.0, 104.0, 104.0, 110.0, 110.0])
    monkeypatch.setattr(metrics_module.time, "perf_counter", lambda: next(clock))
    lines = []
    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=False, world_size=2, echo=lines.append)
    logger.peak = 100.0  # TFLOP/s
    logger.record({"loss": 1.0}, samples=8, data_seconds=0.5, compute_seconds=1.5, flops=2e12)
    logger.record({"loss": 3.0}, samples=8, data_seconds=0.5, compute_seconds=1.5, flops=2e12)
    row = logger.flush(step=2)  # 4 s of wall time since the window started
    assert row["loss"] == 2.0 and row["samples_per_s"] == 16 * 2 / 4
    assert row["tflops_per_gpu"] == 4e12 / 4 / 1e12 and row["mfu"] == 0.01
    logger.record({"loss": 1.0}, samples=8, data_seconds=0.5, compute_seconds=1.5, flops=None)
    row = logger.flush(step=3)  # a step whose FLOPs are unknown: no figure rather than a wrong one
    assert "tflops_per_gpu" not in row and "mfu" not in row
    logger.close()
    written = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in written] == [2, 3] and written[0]["mfu"] == 0.01
    assert lines[0].startswith("[train] step 2 | loss 2 |") and "mfu 0.01" in lines[0]


def test_the_plain_progress_line_gives_step_loss_rate_and_time_left(monkeypatch, capsys):
    clock = iter([0.0, 10.0, 20.0, 30.0, 40.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    progress = Progress(start_step=100, max_steps=104, enabled=True, bar=False, every=2)
    for step in (101, 102, 103, 104):  # 10 s a step, 32 samples a step over all ranks
        progress.update(step, loss=0.5, samples=32)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["[progress] step 102/104 (98%) | loss 0.5 | 3.2 samples/s | 0m20s left",
                     "[progress] step 104/104 (100%) | loss 0.5 | 3.2 samples/s | 0m00s left"]
    assert format_seconds(3725) == "1h02m05s"


def test_the_progress_bar_redraws_every_step_and_lines_pass_above_it(capsys):
    progress = Progress(start_step=0, max_steps=3, enabled=True, bar=True, every=100)
    for step in (1, 2, 3):
        progress.update(step, loss=1.25, samples=4)
    progress.echo("[train] step 3 | loss 1.25")
    progress.close()
    captured = capsys.readouterr()
    assert "3/3" in captured.err and "loss=1.25" in captured.err
    assert "[train] step 3 | loss 1.25" in captured.out and "[progress]" not in captured.out
    Progress(0, 3, enabled=False, bar=True, every=1).update(1, 1.0, 4)  # other ranks print nothing
    assert capsys.readouterr() == ("", "")


def test_every_command_logs_info_on_rank_0_and_warnings_naming_the_rank_elsewhere():
    script = ("import logging; from data_pipeline.logging_setup import configure_logging; configure_logging(); "
              "log = logging.getLogger('data_pipeline.loader.mixer'); log.info('data after 1000 steps'); "
              "log.warning('a corpus is slow')")
    ranks = {}
    for rank in (0, 1):
        env = {"RANK": str(rank), "WORLD_SIZE": "2", "PATH": "/usr/bin:/bin",
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        ranks[rank] = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                                     check=True).stderr
    assert "INFO data_pipeline.loader.mixer: data after 1000 steps" in ranks[0]
    assert "rank 0 WARNING data_pipeline.loader.mixer: a corpus is slow" in ranks[0]
    assert "data after 1000 steps" not in ranks[1] and "rank 1 WARNING" in ranks[1]


def test_a_log_that_cannot_be_written_costs_its_rows_not_the_run(tmp_path):
    import errno

    from training.engine.metrics import MetricsLogger

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    lines = []
    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=False, echo=lines.append)
    logger.jsonl.close()
    logger.jsonl = FullDisk()
    for step in (1, 2):
        logger.record({"loss": 1.0}, samples=4, data_seconds=0.0, compute_seconds=0.1)
        logger.flush(step)
    warnings = [line for line in lines if line.startswith("[metrics] warning")]
    assert warnings == ["[metrics] warning: could not write to metrics.jsonl (No space left on device); training "
                        "goes on, the console has every row; rows lost there are counted (metrics_lost)"]
    train = [line for line in lines if line.startswith("[train]")]
    assert len(train) == 2 and "metrics_lost" not in train[0] and "metrics_lost 1" in train[1]
    logger.close()
