"""Process-group set-up for every way a rank is started: the `deepspeed` launcher (which sets
RANK, WORLD_SIZE, LOCAL_RANK), srun tasks (which set only SLURM_*), or a single process."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist


def rank_env_from_slurm(environ: dict) -> dict:
    """RANK / WORLD_SIZE / LOCAL_RANK from srun's task variables, where the launcher set none.

    DeepSpeed's `--launcher slurm` starts ranks through srun, which sets SLURM_PROCID but not
    RANK; without RANK, `deepspeed.init_distributed` falls back to MPI discovery."""
    if "RANK" in environ or "SLURM_PROCID" not in environ:
        return {}
    mapped = {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1")),
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
    }
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in environ]
    if missing:
        raise RuntimeError(f"started by srun without {' and '.join(missing)}: the batch script must export them "
                           f"(launch/slurm_env.py prints them for the allocation)")
    return mapped


def init(backend: str | None = None, timeout_s: float = 1800.0) -> tuple[int, int, torch.device]:
    """Initialises the process group through DeepSpeed, every collective bounded by TIMEOUT_S;
    returns (rank, world size, device)."""
    import datetime

    import deepspeed

    os.environ.update(rank_env_from_slurm(dict(os.environ)))
    if "RANK" not in os.environ:  # a plain `python -m training.pretrain`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    use_cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    timeout = datetime.timedelta(seconds=timeout_s)
    # The groups DeepSpeed makes later (ZeRO's data-parallel group, where the gradients are
    # reduced) take torch's default timeout, 30 minutes, not the world group's: make ours the default.
    import torch.distributed.distributed_c10d as c10d

    for name in ("default_pg_timeout", "default_pg_nccl_timeout"):
        if isinstance(getattr(c10d, name, None), datetime.timedelta):
            setattr(c10d, name, timeout)
    deepspeed.init_distributed(dist_backend=backend or ("nccl" if use_cuda else "gloo"), auto_mpi_discovery=False,
                               timeout=timeout)
    if not use_cuda:
        _unlink_shared_memory_buffer()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def shared_memory_buffer_path(environ: dict, rank: int) -> Path:
    """The file DeepSpeed's CPU communication op maps for this rank's shared-memory all-reduce
    when every rank runs on one machine (the launcher sets LOCAL_SIZE = WORLD_SIZE): named after
    the user, MASTER_ADDR, MASTER_PORT and the rank (deepspeed/ops/csrc/cpu/comm/shm.cpp)."""
    return Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{environ.get('MASTER_ADDR', '')}_"
                               f"{environ.get('MASTER_PORT', '')}_{rank}")


def _unlink_shared_memory_buffer() -> None:
    """DeepSpeed never removes its shared-memory buffer (69 MB per rank), so every CPU run left
    one per rank in /dev/shm, in memory, until the machine restarted. Once every rank has mapped
    every other's (they do so inside init_distributed), each rank removes its own name; the
    memory goes when the last rank using it exits."""
    if os.environ.get("LOCAL_SIZE") != str(dist.get_world_size()):  # the same on every rank
        return  # ranks on several machines: DeepSpeed made no buffer
    dist.barrier()
    shared_memory_buffer_path(dict(os.environ), dist.get_rank()).unlink(missing_ok=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """True where any rank is True, so that every rank takes the same branch."""
    tensor = torch.tensor([float(f) for f in flags], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of TENSOR, on its device: nothing is read on the host."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        from training.runtime.instrumentation import traffic_category

        tensor = tensor.clone()
        with traffic_category("figures"):
            dist.all_reduce(tensor)
    return tensor


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_gather(obj) -> list:
    """OBJ (small, picklable) from every rank, in rank order, on every rank."""
    if _world() == 1:
        return [obj]
    gathered = [None] * _world()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj, src: int = 0):
    """Rank SRC's OBJ (small, picklable) on every rank."""
    if _world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
