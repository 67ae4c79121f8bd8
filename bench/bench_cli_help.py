"""How long each command takes to answer `--help`: a fresh process per call, as a user's shell
starts it, median of several calls.

    python bench/bench_cli_help.py                 # every x2vlm-* command, 5 calls each
    python bench/bench_cli_help.py --commands x2vlm-predict --repeats 10

The commands are run through the virtual environment's Python (`python -m MODULE --help`),
which is what the console scripts do. The median is what a user meets; the import of torch
alone is timed too, the floor of a command that loads it before parsing its arguments.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

# The console scripts of setup.py and the modules they run.
COMMANDS = {
    "x2vlm-predict": "training.predict", "x2vlm-eval": "training.eval", "x2vlm-zero-shot": "training.zero_shot",
    "x2vlm-export": "training.export", "x2vlm-finetune": "training.finetune", "x2vlm-pretrain": "training.pretrain",
    "x2vlm-convert": "training.convert", "x2vlm-curves": "training.curves", "x2vlm-shards": "data_pipeline.shards",
}


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", nargs="+", choices=sorted(COMMANDS), default=sorted(COMMANDS))
    parser.add_argument("--repeats", type=int, default=5, help="calls per command (5)")
    args = parser.parse_args(argv)
    rows = [("import torch (the floor of a command that loads it first)", [sys.executable, "-c", "import torch"])]
    rows += [(f"{name} --help", [sys.executable, "-m", COMMANDS[name], "--help"]) for name in args.commands]
    width = max(len(title) for title, _ in rows)
    print(f"{'':<{width}}  median s  [min-max]")
    for title, command in rows:
        times = [seconds(command) for _ in range(args.repeats)]
        print(f"{title:<{width}}  {statistics.median(times):8.2f}  [{min(times):.2f}-{max(times):.2f}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
