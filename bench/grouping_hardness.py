"""Grouped batches against random ones under the same weights: the hardness figures of the step
where the two runs part.

    python bench/grouping_hardness.py                          # start 200, 10 steps, seeds 0 1 2
    python bench/grouping_hardness.py --start 100 --seeds 0

For each seed two demo runs (configs/runs/demo.yaml, 2 CPU ranks) log every step: `random` is
the demo as shipped; `grouped` has data.grouping on from step START (records written from step 1,
batches grouped from START on, as in compare_objectives.py's `grouping_late`). Up to START the
two are the same run, so at step START+1 they have the same weights and the same random state
and differ only in their batches: that step's figures (`<kind>/itm_neg_sim`, the mean cosine
similarity of the drawn ITM negatives, and `<kind>/itc_hardness`, the mean top non-positive ITC
similarity) compare how hard grouped and random batches are for one model. The steps after it
show the gap once the weights part. Over a whole run the model trained on grouped batches
learns to push those neighbours apart (and a higher temperature, which flattens the draw), which
is why a run's mean of these figures does not show grouping's effect by itself.

Each finished pair leaves RESULTS/<random|grouped>-seed<S>-start<START>/train/metrics.jsonl and a
later call reuses it. The demo's shards must exist (`bash scripts/demo_data.sh runs/demo`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_objectives import REPO_ROOT, train_demo  # noqa: E402

KINDS = ("image", "region", "video")
FIGURES = ("itm_neg_sim", "itc_hardness", "itc")
BRANCHES = {"random": (), "grouped": ("data.grouping.enabled=true", "data.grouping.refresh_steps=25")}


def branch_rows(results: Path, branch: str, seed: int, start: int, steps: int, log) -> dict[int, dict]:
    """{step: train row} of the steps after START of one branch, trained unless already there."""
    directory = results / f"{branch}-seed{seed}-start{start}"
    metrics = directory / "train/metrics.jsonl"
    last = start + steps

    def rows() -> dict[int, dict]:
        found = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        return {row["step"]: row for row in found if row.get("kind") == "train" and row["step"] >= start}

    if last not in rows():
        log(f"{branch} seed {seed}: training {last} steps in {directory}")
        overrides = ["logging.every_steps=1", "eval.every_steps=0", *BRANCHES[branch]]
        if branch == "grouped":
            overrides.append(f"data.grouping.start_step={start}")
        seconds = train_demo(directory, seed, last, tuple(overrides), branch)
        log(f"{branch} seed {seed}: {seconds:.0f} s")
    return rows()


def report(pairs: dict[int, tuple[dict, dict]], start: int, steps: int) -> str:
    lines = []
    for kind in KINDS:
        keys = [f"{kind}/{figure}" for figure in FIGURES]
        if not any(key in row for rows, _ in pairs.values() for row in rows.values() for key in keys):
            continue
        head = f"{kind:<7} step | " + " | ".join(f"{figure + ' random -> grouped':<32}" for figure in FIGURES)
        lines += ["", head, "-" * len(head)]
        for step in range(start + 1, start + steps + 1):
            cells = []
            for key in keys:
                values = [(random[step].get(key), grouped[step].get(key)) for random, grouped in pairs.values()]
                values = [v for v in values if None not in v]
                if values:
                    r, g = statistics.fmean(v[0] for v in values), statistics.fmean(v[1] for v in values)
                    cells.append(f"{r:7.3f} -> {g:7.3f} ({g - r:+.3f})          ")
                else:
                    cells.append(" " * 32)
            lines.append(f"{'':<7} {step:4d} | " + " | ".join(cell[:32] for cell in cells))
        cells = []
        for key in keys:
            values = [(random[s][key], grouped[s][key]) for random, grouped in pairs.values()
                      for s in range(start + 1, start + steps + 1) if key in random[s] and key in grouped[s]]
            r, g = statistics.fmean(v[0] for v in values), statistics.fmean(v[1] for v in values)
            cells.append(f"{r:7.3f} -> {g:7.3f} ({g - r:+.3f})          "[:32])
        lines.append(f"{'mean':<12} | " + " | ".join(cells))
        # Per seed, the kind's first step after the split (a kind need not be trained every step):
        # the same weights at START+1, the weights of a few steps apart after it.
        first = keys[0]
        per_seed = []
        for seed, (random, grouped) in pairs.items():
            step = min((s for s in random if s > start and first in random[s] and first in grouped.get(s, {})),
                       default=None)
            if step is not None:
                per_seed.append(f"seed {seed} step {step}: {random[step][first]:.3f} -> {grouped[step][first]:.3f}")
        lines.append(f"{first}, its first step after {start}, per seed: " + "; ".join(per_seed))
    for seed, (random, grouped) in pairs.items():
        if random[start]["loss"] != grouped[start]["loss"]:
            lines.append(f"seed {seed}: the runs differ already at step {start} (loss {random[start]['loss']} against "
                         f"{grouped[start]['loss']}): the comparison is not at the same weights")
    lines.append(f"\nmeans over seeds {sorted(pairs)}; step {start + 1} is the first after the runs part "
                 f"(same weights, different batches); itc is the ITC loss")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--start", type=int, default=200, help="the step the runs part at (default: 200)")
    parser.add_argument("--steps", type=int, default=10, help="steps logged after START (default: 10)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "runs/compare/hardness",
                        help="folder of the runs (default: runs/compare/hardness)")
    args = parser.parse_args(argv)
    if args.start < 1 or args.steps < 1:
        parser.error("--start and --steps must be at least 1")
    if not any((REPO_ROOT / "runs/demo/shards/image/train").glob("*.tar")):
        parser.error("no demo shards under runs/demo/shards: build them with `bash scripts/demo_data.sh runs/demo`")

    def log(line: str) -> None:
        print(f"[hardness {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    pairs = {seed: (branch_rows(args.results, "random", seed, args.start, args.steps, log),
                    branch_rows(args.results, "grouped", seed, args.start, args.steps, log))
             for seed in args.seeds}
    print(report(pairs, args.start, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
