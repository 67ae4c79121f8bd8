"""Runs shard jobs in this process or in a pool of worker processes, feeding one progress
bar. Each shard is written by exactly one worker from its planned samples, so the bytes
do not depend on how many workers there are."""
from __future__ import annotations

import multiprocessing as mp
from typing import Callable

from .build_state import BuildState
from .sample_encoder import EncodeOptions
from .shard_job import ShardTask, build_shard

_samples_done = None  # per worker process: the shared counter the main process reads


def _init_worker(counter) -> None:
    global _samples_done
    _samples_done = counter


def _count(n: int) -> None:
    with _samples_done.get_lock():
        _samples_done.value += n


def _run(job: tuple[ShardTask, EncodeOptions, BuildState]) -> dict:
    task, options, state = job
    return build_shard(task, options, state, _count)


def run_shard_jobs(tasks: list[ShardTask], options: EncodeOptions, state: BuildState, workers: int,
                   progress: Callable[[int], None]) -> list[dict]:
    """Builds every task; the records come back in task order."""
    if workers == 1 or len(tasks) <= 1:
        return [build_shard(task, options, state, progress) for task in tasks]
    # forkserver: workers start clean, not as copies of a process that runs the progress thread.
    context = mp.get_context("forkserver")
    counter = context.Value("q", 0)
    records = {}
    reported = 0
    with context.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(counter,)) as pool:
        results = pool.imap_unordered(_run, [(task, options, state) for task in tasks])
        while len(records) < len(tasks):
            try:
                record = results.next(timeout=0.2)
                records[record["name"]] = record
            except mp.TimeoutError:
                pass
            done = counter.value
            progress(done - reported)
            reported = done
    return [records[task.name] for task in tasks]
