"""A run written by an earlier version of the project resumes under this one, with the same job
command and the same config files, and logs bit for bit what the earlier version logged when it
went on (tests/fixtures/run_0.1.0/README.md says how the run was made).

The run: the tiny model on 2 CPU ranks under ZeRO-2 (bf16), image, region and video batches,
momentum distillation and grouped mini-batches on, the trained-keys log on, checkpointed at
step 4 of 8 and stopped after step 8 before its checkpoint was written. Resuming must restore
the engine, the momentum copy and queues, the grouping records and the keys log from the
version-0.1.0 layout of the checkpoint, and give the losses and figures of steps 5-8 that
version 0.1.0 logged, under the same names."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from engine_support import Ranks

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_0.1.0"
# Timings differ from run to run; everything else a row holds must be equal.
TIMINGS = ("time", "samples_per_s", "step_s", "data_wait_s", "compute_s", "tflops_per_gpu")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train_rows(path: Path, after: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows
            if row["kind"] == "train" and row["step"] > after]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_of_version_0_1_0_resumes_and_logs_what_that_version_logged(tmp_path, engine_shards):
    # The fixture's run read the session's demo shards; other bytes would make the comparison meaningless.
    expected = json.loads((FIXTURE / "shards_sha256.json").read_text())
    found = {kind: {name: _digest(engine_shards / kind / name) for name in names} for kind, names in expected.items()}
    assert found == expected, "the demo shards differ from those the 0.1.0 run read (demo corpus or build changed)"

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "shards").symlink_to(engine_shards, target_is_directory=True)
    written_by_0_1_0 = {name: _files(run / "out" / name) for name in ("trained_keys", "grouping_features")}

    ranks = Ranks(run / "run.yaml", 2, cwd=run)  # the run's own command: --resume auto is the default
    codes = ranks.wait(timeout=600)
    output = ranks.output()
    assert codes == [0, 0], output[-6000:]
    assert "[resume] step 4 from out/checkpoints/step_00000004" in output, output[-6000:]

    logged = _train_rows(run / "out/metrics.jsonl", after=4)
    assert [row["step"] for row in logged] == [5, 6, 7, 8]
    assert logged == _train_rows(FIXTURE / "logged_after_resume.jsonl", after=4)
    # The records grouping reads and the keys log: cut back to step 4, then written again alike.
    for name, files in written_by_0_1_0.items():
        assert _files(run / "out" / name) == files, name


def test_a_run_of_version_0_1_0_resumes_on_another_world_size(tmp_path, engine_shards):
    """The universal copy of a 0.1.0 checkpoint keeps its optimizer state per parameter under
    0.1.0's names; they are renamed to the task's before it is loaded."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "shards").symlink_to(engine_shards, target_is_directory=True)
    ranks = Ranks(run / "run.yaml", 1, cwd=run)
    codes = ranks.wait(timeout=600)
    output = ranks.output()
    assert codes == [0], output[-6000:]
    assert "[resume] step 4 from out/checkpoints/step_00000004 (universal, from 2 ranks to 1)" in output, output[-6000:]
    zero = run / "out/checkpoints/step_00000004_universal/step_00000004/zero"
    assert (zero / "model.vision_proj.weight").is_dir() and not (zero / "vision_proj.weight").exists()
    logged = _train_rows(run / "out/metrics.jsonl", after=4)
    assert [row["step"] for row in logged] == [5, 6, 7, 8]
