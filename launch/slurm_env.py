"""Turns a Slurm allocation into a `deepspeed --launcher slurm` launch.

Run inside a batch script (SLURM_JOB_ID, SLURM_JOB_NODELIST, SLURM_TASKS_PER_NODE set):

  eval "$(python -m launch.slurm_env --hostfile H)"    # write H, print `export` lines
  python -m launch.slurm_env --hostfile H --dry-run -- --config RUN.yaml   # also print the command
  python -m launch.slurm_env --hostfile H --launch -- --config RUN.yaml    # exec it

Batch-level variables only: MASTER_ADDR, MASTER_PORT and X2VLM_HOSTFILE. RANK and LOCAL_RANK
differ per rank, so each srun task derives them, and WORLD_SIZE, from its own SLURM_PROCID,
SLURM_LOCALID and SLURM_NTASKS (training/distributed.py); the exports unset all three so
that stale values from the submitting shell, which sbatch copies into the job, cannot win.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.logging_setup import configure_logging
from launch.hostlist import expand_hostlist

DEFAULT_TRAIN_SCRIPT = "training/pretrain.py"
# Below Linux's ephemeral range (32768-60999), so that no client socket the kernel numbered
# holds it; jobs whose ids are less than PORT_SPAN apart get different ports.
PORT_BASE = 20000
PORT_SPAN = 10000


class SlurmEnvError(RuntimeError):
    """The environment is not a usable Slurm allocation; the message names the variable."""


@dataclass(frozen=True)
class Allocation:
    job_id: str
    hosts: list[str]
    tasks_per_node: int
    cpus_per_task: int | None
    master_addr: str
    master_port: int


def _require(environ: dict, name: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise SlurmEnvError(f"{name} is not set: run inside a Slurm allocation (sbatch or salloc)")
    return value


_TASK_COUNTS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def expand_tasks_per_node(text: str) -> list[int]:
    """Slurm's compressed per-node counts: `2(x3),1` -> [2, 2, 2, 1]."""
    counts = []
    for item in text.split(","):
        match = _TASK_COUNTS.match(item.strip())
        if not match:
            raise SlurmEnvError(f"SLURM_TASKS_PER_NODE={text!r}: cannot read {item!r} (expected N or N(xM))")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def tasks_per_node(environ: dict, node_count: int) -> int:
    """Ranks per node: one task per rank, the same on every node (srun's -n cannot do otherwise)."""
    text = _require(environ, "SLURM_TASKS_PER_NODE")
    counts = expand_tasks_per_node(text)
    if len(counts) != node_count:
        raise SlurmEnvError(f"SLURM_TASKS_PER_NODE={text!r} gives {len(counts)} nodes but SLURM_JOB_NODELIST has "
                            f"{node_count}")
    if len(set(counts)) > 1:
        raise SlurmEnvError(f"SLURM_TASKS_PER_NODE={text!r}: every node needs the same number of ranks; "
                            f"ask sbatch for --ntasks-per-node")
    gpus = environ.get("SLURM_GPUS_ON_NODE")
    if gpus and int(gpus) > 0 and int(gpus) != counts[0]:
        raise SlurmEnvError(f"SLURM_GPUS_ON_NODE={gpus} but SLURM_TASKS_PER_NODE={text!r}: one rank per GPU needs "
                            f"sbatch --ntasks-per-node={gpus}")
    return counts[0]


def scontrol_node_addr(host: str) -> str:
    """The address Slurm itself uses to reach `host` (NodeAddr in slurm.conf)."""
    try:
        result = subprocess.run(["scontrol", "show", "node", host, "--oneliner"], capture_output=True, text=True)
    except OSError as error:
        raise SlurmEnvError(f"host {host!r} does not resolve and scontrol cannot run: {error}") from None
    if result.returncode != 0:
        raise SlurmEnvError(f"host {host!r} does not resolve and `scontrol show node {host}` failed: "
                            f"{(result.stderr or result.stdout).strip() or result.returncode}")
    out = result.stdout
    match = re.search(r"\bNodeAddr=(\S+)", out)
    if not match:
        raise SlurmEnvError(f"host {host!r} does not resolve and `scontrol show node {host}` gives no NodeAddr")
    return match.group(1)


def resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except socket.gaierror:
        return False


def master_addr(first_host: str) -> str:
    """The first host by name where the name resolves, since that is what every node can use;
    otherwise the NodeAddr slurm.conf gives for it (clusters whose node names are not DNS names)."""
    return first_host if resolves(first_host) else scontrol_node_addr(first_host)


def master_port(environ: dict) -> int:
    """X2VLM_MASTER_PORT if set, else a port derived from the job id: a requeued job keeps its
    id and so its port, and jobs running at the same time get different ones."""
    override = environ.get("X2VLM_MASTER_PORT")
    if override:
        if not override.isdigit() or not 0 < int(override) < 65536:
            raise SlurmEnvError(f"X2VLM_MASTER_PORT={override!r} is not a port number (1-65535)")
        return int(override)
    job_id = _require(environ, "SLURM_JOB_ID")
    if not job_id.isdigit():
        raise SlurmEnvError(f"SLURM_JOB_ID={job_id!r} is not a number")
    return PORT_BASE + int(job_id) % PORT_SPAN


def allocation_from_env(environ: dict) -> Allocation:
    nodelist = _require(environ, "SLURM_JOB_NODELIST")
    try:
        hosts = expand_hostlist(nodelist)
    except ValueError as error:
        raise SlurmEnvError(f"SLURM_JOB_NODELIST: {error}") from None
    cpus = environ.get("SLURM_CPUS_PER_TASK")
    return Allocation(
        job_id=_require(environ, "SLURM_JOB_ID"),
        hosts=hosts,
        tasks_per_node=tasks_per_node(environ, len(hosts)),
        cpus_per_task=int(cpus) if cpus else None,
        master_addr=master_addr(hosts[0]),
        master_port=master_port(environ),
    )


def hostfile_text(allocation: Allocation) -> str:
    return "".join(f"{host} slots={allocation.tasks_per_node}\n" for host in allocation.hosts)


def export_lines(allocation: Allocation, hostfile: Path) -> str:
    return (f"export MASTER_ADDR={shlex.quote(allocation.master_addr)}\n"
            f"export MASTER_PORT={allocation.master_port}\n"
            f"export X2VLM_HOSTFILE={shlex.quote(str(hostfile))}\n"
            "unset RANK LOCAL_RANK WORLD_SIZE\n")


def deepspeed_command(allocation: Allocation, hostfile: Path, train_script: str, trainer_args: list[str]) -> list[str]:
    """`--launcher slurm` makes the deepspeed runner start every rank as an srun task, so Slurm's
    signals reach each rank. `--force_multi` keeps that path for a one-node allocation, where the
    runner would otherwise start a local launcher that forwards only SIGINT and SIGTERM."""
    # Since Slurm 22.05 srun no longer inherits --cpus-per-task from the batch job; without it
    # each rank (and its data-loader workers) would get one CPU.
    srun_args = [f"--ntasks-per-node={allocation.tasks_per_node}"]
    if allocation.cpus_per_task:
        srun_args.append(f"--cpus-per-task={allocation.cpus_per_task}")
    return ["deepspeed", "--launcher", "slurm", "--no_ssh_check", "--force_multi",
            "--hostfile", str(hostfile),
            "--master_addr", allocation.master_addr, "--master_port", str(allocation.master_port),
            "--launcher_args", " ".join(srun_args),
            train_script, *trainer_args]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="x2vlm-slurm-env",
        description="Inside a Slurm batch job: write a DeepSpeed hostfile for the allocation and print `export` "
                    "lines for MASTER_ADDR / MASTER_PORT (eval them); with --dry-run also print the deepspeed "
                    "command, with --launch run it. Arguments after `--` go to the training script.",
        epilog="MASTER_ADDR is the first host of SLURM_JOB_NODELIST, or its NodeAddr from `scontrol show node` "
               "where the name does not resolve. MASTER_PORT is 20000 + SLURM_JOB_ID % 10000 unless "
               "X2VLM_MASTER_PORT is set.",
    )
    parser.add_argument("--hostfile", type=Path, required=True, help="where to write the DeepSpeed hostfile")
    parser.add_argument("--train-script", default=None,
                        help=f"the program every rank runs (default: $X2VLM_TRAIN_SCRIPT, else {DEFAULT_TRAIN_SCRIPT})")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the exports and the deepspeed command; run nothing")
    mode.add_argument("--launch", action="store_true", help="exec the deepspeed command with the exports applied")
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER, help="-- then the training script's arguments")
    args = parser.parse_args(argv)
    if args.trainer_args[:1] == ["--"]:
        args.trainer_args = args.trainer_args[1:]
    return args


def main(argv: list[str] | None = None, environ: dict | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    environ = dict(os.environ if environ is None else environ)
    try:
        allocation = allocation_from_env(environ)
    except SlurmEnvError as error:
        print(f"x2vlm-slurm-env: {error}", file=sys.stderr)
        return 2
    args.hostfile.parent.mkdir(parents=True, exist_ok=True)
    args.hostfile.write_text(hostfile_text(allocation))
    train_script = args.train_script or environ.get("X2VLM_TRAIN_SCRIPT") or DEFAULT_TRAIN_SCRIPT
    command = deepspeed_command(allocation, args.hostfile, train_script, args.trainer_args)
    exports = export_lines(allocation, args.hostfile)
    if not args.launch:
        sys.stdout.write(exports)
        if args.dry_run:
            print(shlex.join(command))
        return 0
    if shutil.which("deepspeed") is None:
        print("x2vlm-slurm-env: `deepspeed` is not on PATH: put the virtual environment's bin/ first",
              file=sys.stderr)
        return 2
    environ.update(MASTER_ADDR=allocation.master_addr, MASTER_PORT=str(allocation.master_port),
                   X2VLM_HOSTFILE=str(args.hostfile))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        environ.pop(name, None)
    print(f"[slurm_env] {shlex.join(command)}", file=sys.stderr, flush=True)
    os.execvpe(command[0], command, environ)


if __name__ == "__main__":
    sys.exit(main())
