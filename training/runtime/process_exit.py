"""Ending a training process without Python's interpreter teardown.

After a run, the interpreter's own shutdown (clearing the modules of torch, DeepSpeed and
transformers, and the garbage collections that go with it) takes seconds per rank on CPU; after
a pre-emption checkpoint those seconds count against the scheduler's grace period. Once the run
has closed what it opened, `exit_process` runs the atexit handlers (logging, multiprocessing's
child clean-up, DeepSpeed's) and flushes the standard streams, then ends the process at once.
Only for a process's `__main__`: called in-process (tests, notebooks) it would end the caller.
"""
from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def exit_process(code: int | None) -> NoReturn:
    code = 0 if code is None else code
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing left to save
                pass
        os._exit(code)
