"""The real launch/slurm/pretrain.sbatch on a real two-node Slurm cluster (tests/slurm_cluster.py):
one CPU rank per node, gloo, started by `deepspeed --launcher slurm`. The ranks run the
stand-in tests/slurm_standin_rank.py (X2VLM_TRAIN_SCRIPT), which uses the trainer's
distributed start, signal handling and requeue exit code but steps in a fraction of a second.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import free_port

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "launch" / "slurm" / "pretrain.sbatch"
STANDIN = "tests/slurm_standin_rank.py"
VENV = Path(sys.executable).parent.parent  # the environment running the tests, deepspeed included
# The template asks for GPU nodes; the test cluster has two CPUs per node and no GPU.
CPU_OPTIONS = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10"]
# The first DeepSpeed start on a machine compiles a small op; later starts take seconds.
START_TIMEOUT = 240


def submit(cluster, run_dir: Path, config_path: Path, overrides: list[str] = (), train_script: str = STANDIN,
           sbatch_options: list[str] = (), env: dict | None = None) -> str:
    """Submits the real template for `config_path` on the CPU cluster; logs and hostfile go
    to run_dir/logs. Returns the job id."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    job_env = {"X2VLM_TRAIN_SCRIPT": train_script, "X2VLM_VENV": str(VENV), "X2VLM_LOG_DIR": str(run_dir / "logs"),
               "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1",
               **(env or {})}
    return cluster.sbatch(TEMPLATE, [str(config_path), *overrides],
                          [*CPU_OPTIONS, *sbatch_options, f"--chdir={REPO}", f"--output={run_dir}/logs/%x-%j.out"],
                          job_env)


def preempt_and_finish(cluster, job: str, signal_name: str, started, timeout: float = START_TIMEOUT) -> dict:
    """Once started() is true, sends the signal to the job's ranks as Slurm would before a time
    limit, waits for the batch script's requeue, lets the job start again at once and waits
    for its end. Returns the final `scontrol show job` fields."""
    deadline = time.monotonic() + timeout
    while not started():
        assert time.monotonic() < deadline, f"job {job} did not start within {timeout} s\n{cluster.job_output(job)}"
        assert cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), cluster.job_output(job)
        time.sleep(0.2)
    cluster.signal(job, signal_name)
    cluster.wait_job(job, lambda j: j["Restarts"] == "1" and j["JobState"] == "PENDING", 60,
                     "requeued by the batch script")
    cluster.release_requeued(job)
    return cluster.wait_finished(job, timeout)


def write_standin_config(run_dir: Path, max_steps: int, step_seconds: float) -> Path:
    path = run_dir / "standin.yaml"
    path.write_text(yaml.safe_dump({"run": {"output_dir": str(run_dir), "max_steps": max_steps},
                                    "standin": {"step_seconds": step_seconds},
                                    "guard": {"signals": ["SIGUSR1", "SIGTERM"]}}))
    return path


def attempts(run_dir: Path) -> dict[int, list[dict]]:
    return {rank: [json.loads(line) for line in (run_dir / "attempts" / f"rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}


def logged_steps(run_dir: Path) -> list[dict]:
    path = run_dir / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_ranks_on_two_hosts_join_one_gloo_group(slurm_cluster, tmp_path):
    # The config says 50 steps; the override on the sbatch line must win.
    # RANK / LOCAL_RANK left over in the submitting shell reach the job (sbatch --export=ALL) and
    # must not override what each srun task is.
    job = submit(slurm_cluster, tmp_path, write_standin_config(tmp_path, max_steps=50, step_seconds=0.1),
                 overrides=["run.max_steps=5"], env={"RANK": "5", "LOCAL_RANK": "3", "WORLD_SIZE": "9"})
    info = slurm_cluster.wait_finished(job, START_TIMEOUT)
    log = slurm_cluster.job_output(job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log

    (rank0,), (rank1,) = attempts(tmp_path).values()
    assert (rank0["host"], rank1["host"]) == ("node1", "node2")
    for rank, record in enumerate((rank0, rank1)):
        assert (record["rank"], record["world_size"], record["local_rank"]) == (rank, 2, 0)
        assert record["rank_sum"] == 1 + 2  # the all_reduce saw both ranks
        assert (record["master_addr"], record["master_port"]) == ("node1", str(20000 + int(job) % 10000))
        assert (record["last_step"], record["exit_code"], record["signal"]) == (5, 0, None)
    assert logged_steps(tmp_path) == [{"step": s, "value": 3.0 * s} for s in range(1, 6)]
    assert (tmp_path / "logs" / f"{job}.hostfile").read_text() == "node1 slots=1\nnode2 slots=1\n"
    assert "deepspeed --launcher slurm --no_ssh_check --force_multi" in log
    assert "--set run.max_steps=5 --resume auto" in log


@pytest.mark.parametrize("signal_name, options", [
    ("USR1", {}),  # the template's default
    # A cluster that reserves USR1: the sbatch option and the trainer's handler move together.
    ("USR2", {"sbatch": ["--signal=USR2@60"], "env": {"X2VLM_PREEMPT_SIGNAL": "USR2"}}),
])
def test_signal_part_way_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path, signal_name, options):
    max_steps = 16
    job = submit(slurm_cluster, tmp_path, write_standin_config(tmp_path, max_steps, step_seconds=0.5),
                 sbatch_options=options.get("sbatch", ()), env=options.get("env"))
    info = preempt_and_finish(slurm_cluster, job, signal_name, started=lambda: len(logged_steps(tmp_path)) >= 3)
    log = slurm_cluster.job_output(job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log

    runs = attempts(tmp_path)
    stopped_at = runs[0][0]["last_step"]
    assert 3 <= stopped_at < max_steps
    for rank, (first, second) in runs.items():
        host = ("node1", "node2")[rank]
        # Each rank received the signal itself: srun delivered it to every task.
        assert first == {**first, "host": host, "restart_count": 0, "signal": f"SIG{signal_name}", "exit_code": 85,
                         "last_step": stopped_at}
        assert second == {**second, "host": host, "restart_count": 1, "signal": None, "exit_code": 0,
                          "first_step": stopped_at + 1, "last_step": max_steps, "rank_sum": 3.0}
    # Every step ran exactly once across the two allocations, as in an uninterrupted run.
    assert logged_steps(tmp_path) == [{"step": s, "value": 3.0 * s} for s in range(1, max_steps + 1)]
    # One log for both allocations (--open-mode=append).
    assert "restart 0 on node[1-2]" in log and "restart 1 on node[1-2]" in log
    assert "launcher exited with 85" in log and f"requeueing job {job}" in log


@pytest.mark.parametrize("args, message", [
    (["missing.yaml"], "run config missing.yaml not found"),
    (["standin.yaml", "optim.lr"], "override 'optim.lr' is not KEY=VALUE"),
])
def test_bad_submission_fails_fast_naming_the_input(slurm_cluster, tmp_path, args, message):
    write_standin_config(tmp_path, 1, 0.1)
    (tmp_path / "logs").mkdir()
    job = slurm_cluster.sbatch(TEMPLATE, args, [*CPU_OPTIONS, f"--chdir={tmp_path}",
                                                f"--output={tmp_path}/logs/%x-%j.out"],
                               {"X2VLM_REPO_DIR": str(tmp_path), "X2VLM_VENV": str(VENV)})
    info = slurm_cluster.wait_finished(job, 60)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0")
    assert message in slurm_cluster.job_output(job)


def test_one_node_without_slurm_through_the_deepspeed_launcher(tmp_path):
    """The README's one-node command: `deepspeed --num_gpus N SCRIPT --config ...`, two ranks."""
    config = write_standin_config(tmp_path, max_steps=3, step_seconds=0.1)
    port = free_port()
    # PYTHONPATH: the ranks import this checkout's training package, not another installed copy.
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(port), STANDIN,
                             "--config", str(config)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    records = [record for (record,) in attempts(tmp_path).values()]
    assert [(r["rank"], r["local_rank"], r["world_size"], r["rank_sum"], r["last_step"]) for r in records] == [
        (0, 0, 2, 3.0, 3), (1, 1, 2, 3.0, 3)]
    assert logged_steps(tmp_path) == [{"step": s, "value": 3.0 * s} for s in range(1, 4)]


def test_real_trainer_preempted_requeued_and_resumed_matches_one_node_run(slurm_cluster, engine_shards, tmp_path):
    """The tiny model on demo shards: the uninterrupted run on one node through
    `deepspeed --num_gpus 2`, against the sbatch template on two Slurm nodes, signalled part-way,
    requeued and resumed. Same step count, same loss sequence."""
    from engine_support import data_config, losses_by_step, write_run_config

    max_steps = 8
    config = write_run_config(tmp_path / "cfg", engine_shards, max_steps=max_steps,
                              data=data_config(engine_shards, kinds=("image_text", "region")),
                              checkpoint={"every_steps": 100})
    reference = tmp_path / "reference"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    port = free_port()
    result = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(port), "training/pretrain.py",
                             "--config", str(config), "--set", f"run.output_dir={reference}", "--resume", "none"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # DeepSpeed's shared-memory all-reduce buffers (69 MB per rank, mapped when every rank is on
    # one machine) are gone with the run instead of staying in /dev/shm.
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
    expected = losses_by_step(reference)
    assert sorted(expected) == list(range(1, max_steps + 1))

    out = tmp_path / "slurm_run"
    job = submit(slurm_cluster, tmp_path, config, [f"run.output_dir={out}"], train_script="training/pretrain.py")
    metrics = out / "metrics.jsonl"
    info = preempt_and_finish(slurm_cluster, job, "USR1",
                              started=lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2)
    log = slurm_cluster.job_output(job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log
    assert "[signal] checkpointed at step" in log and "[resume] step" in log, log
    assert losses_by_step(out) == expected
