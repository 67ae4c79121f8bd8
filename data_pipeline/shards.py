"""`x2vlm-shards`: the corpus command line. Each subcommand lives in its own module under
data_pipeline/shard_tools (`*_command.py`) and registers itself through
`add_subcommand(subparsers)`; `main` only dispatches."""
from __future__ import annotations

import argparse
import sys

from .logging_setup import configure_logging
from .shard_tools import (build_command, demo_command, demo_tokenizer_command, inspect_command, show_command,
                          tokenizer_command, verify_command)

SUBCOMMANDS = (build_command, inspect_command, verify_command, show_command, demo_command, demo_tokenizer_command,
               tokenizer_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="x2vlm-shards",
        description="Build, check and look at the WebDataset tar shards that X2-VLM pre-training reads.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_subcommand(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    configure_logging()
    args.argv = argv  # the manifest records the exact command
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
