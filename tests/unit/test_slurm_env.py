"""launch/slurm_env.py on synthetic SLURM_* environments (exact output), and its NodeAddr
fallback against the real test cluster's scontrol."""
from __future__ import annotations

import os

import pytest

from launch import slurm_env
from launch.slurm_env import SlurmEnvError, expand_tasks_per_node, master_port, tasks_per_node

ALLOCATION = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NODELIST": "gpu-a[1-2],gpu-b3",
    "SLURM_TASKS_PER_NODE": "4(x3)",
    "SLURM_CPUS_PER_TASK": "8",
    "SLURM_GPUS_ON_NODE": "4",
    "RANK": "3",  # left over in the submitting shell: must not reach the ranks
}


@pytest.fixture
def names_resolve(monkeypatch):
    monkeypatch.setattr(slurm_env, "resolves", lambda host: True)


def test_dry_run_prints_exports_and_the_deepspeed_command(tmp_path, capsys, names_resolve):
    hostfile = tmp_path / "job.hostfile"
    code = slurm_env.main(["--hostfile", str(hostfile), "--dry-run", "--",
                           "--config", "configs/runs/x.yaml", "--set", "optim.lr=3e-4", "--resume", "auto"],
                          environ=ALLOCATION)
    assert code == 0
    assert capsys.readouterr().out == (
        "export MASTER_ADDR=gpu-a1\n"
        "export MASTER_PORT=24242\n"
        f"export X2VLM_HOSTFILE={hostfile}\n"
        "unset RANK LOCAL_RANK WORLD_SIZE\n"
        f"deepspeed --launcher slurm --no_ssh_check --force_multi --hostfile {hostfile} --master_addr gpu-a1 "
        "--master_port 24242 --launcher_args '--ntasks-per-node=4 --cpus-per-task=8' training/pretrain.py "
        "--config configs/runs/x.yaml --set optim.lr=3e-4 --resume auto\n")
    assert hostfile.read_text() == "gpu-a1 slots=4\ngpu-a2 slots=4\ngpu-b3 slots=4\n"


def test_train_script_comes_from_the_environment_and_cpus_per_task_is_optional(tmp_path, capsys, names_resolve):
    environ = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[08-09]", "SLURM_TASKS_PER_NODE": "1(x2)",
               "X2VLM_TRAIN_SCRIPT": "tests/slurm_standin_rank.py", "X2VLM_MASTER_PORT": "31000"}
    assert slurm_env.main(["--hostfile", str(tmp_path / "h"), "--dry-run"], environ=environ) == 0
    command = capsys.readouterr().out.splitlines()[-1]
    assert command == (f"deepspeed --launcher slurm --no_ssh_check --force_multi --hostfile {tmp_path / 'h'} "
                       "--master_addr n08 --master_port 31000 --launcher_args --ntasks-per-node=1 "
                       "tests/slurm_standin_rank.py")
    assert (tmp_path / "h").read_text() == "n08 slots=1\nn09 slots=1\n"


def test_without_dry_run_only_the_exports_are_printed(tmp_path, capsys, names_resolve):
    assert slurm_env.main(["--hostfile", str(tmp_path / "h")], environ=ALLOCATION) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "export MASTER_ADDR=gpu-a1"
    assert len(lines) == 4 and not any(line.startswith("deepspeed") for line in lines)


@pytest.mark.parametrize("text, counts", [("1", [1]), ("4(x3)", [4, 4, 4]), ("2(x2),1", [2, 2, 1]),
                                          ("8,8", [8, 8])])
def test_tasks_per_node_expansion(text, counts):
    assert expand_tasks_per_node(text) == counts


@pytest.mark.parametrize("environ, message", [
    ({"SLURM_TASKS_PER_NODE": "2(x2),1"}, "same number of ranks"),
    ({"SLURM_TASKS_PER_NODE": "2(x2)"}, "gives 2 nodes but SLURM_JOB_NODELIST has 3"),
    ({"SLURM_TASKS_PER_NODE": "1(x3)", "SLURM_GPUS_ON_NODE": "8"}, "--ntasks-per-node=8"),
    ({"SLURM_TASKS_PER_NODE": "two"}, "SLURM_TASKS_PER_NODE='two'"),
    ({}, "SLURM_TASKS_PER_NODE is not set"),
])
def test_bad_task_layouts_are_named(environ, message):
    with pytest.raises(SlurmEnvError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tasks_per_node(environ, node_count=3)


def test_port_follows_the_job_id_unless_overridden():
    assert master_port({"SLURM_JOB_ID": "123456"}) == 23456
    assert master_port({"SLURM_JOB_ID": "123457"}) == 23457
    assert master_port({"SLURM_JOB_ID": "1", "X2VLM_MASTER_PORT": "29500"}) == 29500
    with pytest.raises(SlurmEnvError, match="X2VLM_MASTER_PORT='70000'"):
        master_port({"SLURM_JOB_ID": "1", "X2VLM_MASTER_PORT": "70000"})


def test_missing_allocation_is_an_error_naming_the_variable(tmp_path, capsys):
    code = slurm_env.main(["--hostfile", str(tmp_path / "h")], environ={"SLURM_JOB_ID": "1"})
    assert code == 2
    assert "SLURM_JOB_NODELIST is not set" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_unresolvable_first_host_uses_its_node_addr_from_scontrol(slurm_cluster, monkeypatch):
    # The cluster's node names resolve only inside its nodes; here, outside, they do not.
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    assert not slurm_env.resolves("node1"), "this machine resolves node1 itself: the fallback is not exercised"
    environ = {"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_TASKS_PER_NODE": "1(x2)"}
    assert slurm_env.allocation_from_env(environ).master_addr == slurm_cluster.address("node1")
    with pytest.raises(SlurmEnvError, match="'node7' does not resolve.*Node node7 not found"):
        slurm_env.master_addr("node7")


def test_the_cluster_is_skipped_only_for_a_named_reason(monkeypatch):
    from slurm_cluster import unavailable_reason

    monkeypatch.setenv("PATH", "/nonexistent")
    reason = unavailable_reason()
    if os.geteuid() == 0:
        assert reason.startswith("missing programs munged, slurmctld, slurmd,")
    else:
        assert reason.startswith("needs root")
