"""Logging for every command of the project: one format on stderr; INFO from the main process
(rank 0, or a plain process), only warnings and errors from the other ranks, each line naming
its rank, so that a multi-rank log stays readable."""
from __future__ import annotations

import logging
import os
import sys


def configure_logging(verbose: bool = False) -> None:
    """Does nothing where the process already logs somewhere (a test runner, an embedding
    program): their handlers stay theirs."""
    if logging.getLogger().handlers:
        return
    rank = int(os.environ.get("RANK", "0") or 0)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    level = logging.DEBUG if verbose else logging.INFO if rank == 0 else logging.WARNING
    where = f"rank {rank} " if world > 1 else ""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s {where}%(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Libraries that log every request or file at INFO would drown the project's own lines.
    for noisy in ("urllib3", "PIL", "matplotlib", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
