"""Each optional objective on the demo, against the demo run without it, over several seeds.

    python bench/compare_objectives.py                       # all variants, seeds 0 1 2 (hours on 2 cores)
    python bench/compare_objectives.py --variants off momentum --seeds 0
    python bench/compare_objectives.py --report              # the table of the finished runs

Every run is the demo run (configs/runs/demo.yaml: the demo model, 2 CPU ranks, ZeRO-2, 400
steps) with one option turned on by `--set` overrides, and `run.seed` and `data.seed` set to the
seed (initial weights, masks, shuffling). The seeds of `off` give the run-to-run spread the other
variants are read against. Each finished run leaves `RESULTS/<variant>-seed<S>/result.json`, and
a later call skips it: an interrupted comparison goes on where it stopped. The table prints the
held-out figures of the run's last evaluation (mean and min-max over seeds), how the variant's
own loss term fell (mean of its first and last logged values), and the mean similarity of the
drawn ITM negatives (`image/itm_neg_sim`, GRIT-VLP's hardness) over the run.

The demo's shards must exist: `bash scripts/demo_data.sh runs/demo` (or `make demo`) builds them.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# Each variant: the overrides that turn it on, and the train-loss term it adds (None: it adds none).
# Momentum: a queue below one epoch of the demo's 800 images and alpha ramped over about one
# epoch (800 images / 32 pairs per step), as ALBEF ramps it over its first epoch; from step 100
# (ALBEF starts from pre-trained towers) or, momentum_scratch, from the random weights.
MOMENTUM = ("model.losses.momentum_distillation.enabled=true", "model.losses.momentum_distillation.queue_size=512",
            "model.losses.momentum_distillation.alpha_ramp_steps=25")
CONSISTENCY = tuple(f"model.losses.weights.{kind}.itc_cons=0.2" for kind in ("image", "region", "video"))
# The demo's region corpora are corpora 1 and 2 of configs/data/demo.yaml.
REGION_POSITIVES = "model.losses.region_positives=region"


def region_crops(min_side: float) -> tuple[str, ...]:
    return tuple(f"data.corpora.{i}.options.crop_min_side={min_side}" for i in (1, 2))


BEFORE_REGION_FIX = ("model.vision.timm_kwargs.patch_size=16", "data.patch_size=16",
                     "model.losses.region_positives=image", *region_crops(0))
RES128 = ("model.vision.image_size=128", "data.image_res=128")
VARIANTS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "off": ((), None),
    "momentum": ((*MOMENTUM, "model.losses.momentum_distillation.start_step=100"), None),
    "momentum_scratch": (MOMENTUM, None),
    "grouping": (("data.grouping.enabled=true", "data.grouping.refresh_steps=25"), None),
    "grouping_pool4": (("data.grouping.enabled=true", "data.grouping.refresh_steps=25",
                        "data.grouping.pool_batches=4"), None),
    # Grouping from half-way: identical to off up to step 200, so the steps after it compare the
    # hardness of grouped against random batches under the same weights.
    "grouping_late": (("data.grouping.enabled=true", "data.grouping.refresh_steps=25",
                       "data.grouping.start_step=200"), None),
    # Groups of 4 near neighbours, 4 groups to a rank's batch of 16, from step 100.
    "grouping_g4": (("data.grouping.enabled=true", "data.grouping.refresh_steps=25",
                     "data.grouping.start_step=100", "data.grouping.group_size=4"), None),
    # Whole-batch groups with the contrastive temperature held at its initial 0.07 (learned but
    # capped): grouped batches otherwise raise it to about 0.1.
    "grouping_t07": (("data.grouping.enabled=true", "data.grouping.refresh_steps=25", "model.temperature_max=0.07"),
                     None),
    # GRIT-VLP as its code trains: whole-batch groups and its ITC consistency loss at weight 0.2;
    # and that loss alone.
    "grouping_cons": (("data.grouping.enabled=true", "data.grouping.refresh_steps=25", *CONSISTENCY),
                      "image/itc_cons"),
    "consistency": (CONSISTENCY, "image/itc_cons"),
    "mim": (("model.mim.enabled=true", "model.mim.decoder_width=64", "model.mim.decoder_heads=4"), "image/mim"),
    "mim_drop": (("model.mim.enabled=true", "model.mim.drop_masked=true", "model.mim.decoder_width=64",
                  "model.mim.decoder_heads=4"), "image/mim"),
    "captioning": (("model.losses.weights.image.lm=0.5",), "image/lm"),
    # Region-level alignment (README: "Region-level alignment on the demo"). The demo before it
    # learnt (`before_region_fix`: patches of 16, a 4 x 4 grid; a region text's positives all the
    # texts of its image; X²-VLM's region crops, which zoom and move the region) and one change
    # at a time from it; then changes to the demo as it is (patches of 8, region-level positives,
    # region crops keeping 0.8 of the image's sides).
    "before_region_fix": (BEFORE_REGION_FIX, None),
    "region_positives": ((*BEFORE_REGION_FIX, REGION_POSITIVES), None),
    "region_nocrop": ((*BEFORE_REGION_FIX, *region_crops(1)), None),
    "region_both": ((*BEFORE_REGION_FIX, REGION_POSITIVES, *region_crops(1)), None),
    "region_gentle": ((*BEFORE_REGION_FIX, REGION_POSITIVES, *region_crops(0.8)), None),
    "region_itc2": ((*BEFORE_REGION_FIX, REGION_POSITIVES, "model.losses.weights.region.itc=2"), None),
    "region_w128": ((*BEFORE_REGION_FIX, REGION_POSITIVES, "model.vision.timm_kwargs.embed_dim=128"), None),
    # At 128 px: an 8 x 8 grid of patches of 16.
    "res128": ((*BEFORE_REGION_FIX, *RES128), None),
    "region_res128": ((*BEFORE_REGION_FIX, REGION_POSITIVES, *RES128), None),
    "region_res128_gentle": ((*BEFORE_REGION_FIX, REGION_POSITIVES, *region_crops(0.8), *RES128), None),
    "region_res128_itc2": ((*BEFORE_REGION_FIX, REGION_POSITIVES, "model.losses.weights.region.itc=2", *RES128), None),
    # From the demo as it is: region ITC at twice the weight; uncropped region samples; region
    # batches of 16 images per rank instead of 8 (twice the candidates).
    "region_itc2_now": (("model.losses.weights.region.itc=2",), None),
    "region_nocrop_now": (region_crops(1), None),
    "region_b16_now": (("data.corpora.1.batch_size=16", "data.corpora.2.batch_size=16"), None),
}
# (metrics.jsonl key, column title) of the held-out figures.
FIGURES = (("image/img_r1", "T->I R@1"), ("image/txt_r1", "I->T R@1"), ("region/grounding_acc", "grounding"),
           ("video/img_r1", "video R@1"), ("region/region_text/img_r1", "text->region R@1"),
           ("region/region_text/txt_r1", "region->text R@1"))
# Training losses whose first and last logged values every row reports, with what chance gives
# where that is known: ITM's 1:2 positives to negatives, entropy ln 3 - (2/3) ln 2.
TRAJECTORIES = ("region/itc", "region/itm")
ITM_CHANCE_ENTROPY = 0.6365


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_demo(directory: Path, seed: int, max_steps: int, overrides: tuple[str, ...], name: str) -> float:
    """Runs the demo (2 CPU ranks) into DIRECTORY/train with SEED, MAX_STEPS and the further
    `--set` OVERRIDES; its console goes to DIRECTORY/train.log. Returns the seconds it took."""
    overrides = [f"run.output_dir={directory / 'train'}", f"run.seed={seed}", f"data.seed={seed}",
                 f"run.max_steps={max_steps}", f"checkpoint.every_steps={max_steps}", "checkpoint.keep_last=1",
                 "logging.tensorboard=false", *overrides]
    command = [str(REPO_ROOT / ".venv/bin/deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               "training/pretrain.py", "--config", "configs/runs/demo.yaml", "--resume", "none"]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "PATH": f"{REPO_ROOT / '.venv/bin'}:{os.environ['PATH']}"}
    directory.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(directory / "train.log", "w") as out:
        code = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{name} seed {seed}: the run exited {code}; its log is {directory / 'train.log'}")
    return time.monotonic() - start


def run_variant(variant: str, seed: int, directory: Path, max_steps: int, log) -> dict:
    """Trains the demo with VARIANT's overrides and SEED; returns its result row."""
    seconds = train_demo(directory, seed, max_steps, (f"eval.every_steps={max_steps}", *VARIANTS[variant][0]),
                         variant)
    rows = [json.loads(line) for line in (directory / "train/metrics.jsonl").read_text().splitlines()]
    final = [row for row in rows if row["kind"] == "eval"][-1]
    train = [row for row in rows if row["kind"] == "train"]
    result = {"variant": variant, "seed": seed, "steps": final["step"], "seconds": round(seconds, 1),
              **{key: final[key] for key, _ in FIGURES},
              "chance": 1 / final["image/images"], "centre": final["region/centre_baseline_acc"],
              "region_chance": (final["region/region_text/img_r1_chance"], final["region/region_text/txt_r1_chance"])}
    for name in TRAJECTORIES:
        values = [row[name] for row in train if name in row]
        result[f"{name}_first"], result[f"{name}_last"] = values[0], statistics.fmean(values[-3:])
    term = VARIANTS[variant][1]
    if term:
        values = [row[term] for row in train if term in row]
        result["term"], result["term_first"], result["term_last"] = term, values[0], values[-1]
    neg = [row["image/itm_neg_sim"] for row in train if "image/itm_neg_sim" in row]
    result["itm_neg_sim"] = statistics.fmean(neg) if neg else None
    result["neighbours"] = batch_neighbours(directory / "train")
    log(f"{variant} seed {seed}: {seconds:.0f} s, " + ", ".join(f"{title} {result[key]:.3f}" for key, title in FIGURES)
        + ", " + ", ".join(f"{name} {result[name + '_first']:.3f} -> {result[name + '_last']:.3f}" for name in TRAJECTORIES))
    return result


def batch_neighbours(train: Path, corpus: str = "demo_images", seed: int = 0) -> tuple[float, float] | None:
    """How alike the samples of the run's batches were, by the features grouping grouped them
    with: for each batch of the second half of the run (a rank's records of one step), the mean
    over its samples of the cosine similarity to their nearest neighbour in the batch, each
    sample by its record before that step; against batches drawn at random from the batches
    within 8 steps. (grouped, random), or None for a run without grouping records."""
    from data_pipeline.loader.feature_records import read_records, record_files

    root = train / "grouping_features"
    if not root.is_dir():
        return None
    batches, history = collections.defaultdict(list), collections.defaultdict(list)
    for _, rank, path in record_files(root, corpus):
        for step, key, vector in read_records(path):
            batches[(rank, step)].append(key)
            history[key].append((step, vector.astype(np.float32) / (np.linalg.norm(vector) + 1e-8)))

    def nearest(keys, step) -> float | None:
        vectors = [max(((s, v) for s, v in history[k] if s < step), default=(None, None), key=lambda x: x[0])[1]
                   for k in keys]
        vectors = [v for v in vectors if v is not None]
        if len(vectors) < 2:
            return None
        similarity = np.stack(vectors) @ np.stack(vectors).T
        np.fill_diagonal(similarity, -2.0)
        return float(similarity.max(axis=1).mean())

    last = max(step for _, step in batches)
    later = [b for b in batches if b[1] > last // 2]
    rng = np.random.default_rng(seed)
    grouped, drawn = [], []
    for rank, step in later:
        keys = batches[(rank, step)]
        nearby = [k for b in later if abs(b[1] - step) <= 8 for k in batches[b]]
        pair = nearest(keys, step), nearest(list(rng.choice(nearby, len(keys), replace=False)), step)
        if None not in pair:
            grouped.append(pair[0])
            drawn.append(pair[1])
    return (statistics.fmean(grouped), statistics.fmean(drawn)) if grouped else None


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} [{min(values):.3f}-{max(values):.3f}]" if len(values) > 1 else f"{mean:.3f}"


def table(results: list[dict]) -> str:
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in results)]
    head = (f"{'variant':<20} seeds | " + " | ".join(f"{title:<19}" for _, title in FIGURES)
            + " | " + " | ".join(f"{name} first -> last{'':<4}" for name in TRAJECTORIES)
            + " | region/itc last/first" + " | itm_neg_sim | own loss first -> last | s/run")
    lines = [head, "-" * len(head)]
    for variant in variants:
        rows = [r for r in results if r["variant"] == variant]
        cells = [f"{spread([r.get(key, float('nan')) for r in rows]):<19}" for key, _ in FIGURES]
        cells += [f"{statistics.fmean(r.get(name + '_first', float('nan')) for r in rows):.3f} -> "
                  f"{spread([r.get(name + '_last', float('nan')) for r in rows]):<19}" for name in TRAJECTORIES]
        cells.append(f"{spread([r['region/itc_last'] / r['region/itc_first'] for r in rows]):<21}")
        neg = [r["itm_neg_sim"] for r in rows if r["itm_neg_sim"] is not None]
        term = (f"{rows[0]['term']} {statistics.fmean(r['term_first'] for r in rows):.3f} -> "
                f"{statistics.fmean(r['term_last'] for r in rows):.3f}" if "term" in rows[0] else "")
        lines.append(f"{variant:<20} {len(rows):>5} | " + " | ".join(cells)
                     + f" | {statistics.fmean(neg) if neg else float('nan'):11.3f} | {term:<22} | "
                     f"{statistics.fmean(r['seconds'] for r in rows):5.0f}")
    region_chance = results[0].get("region_chance", (float("nan"), float("nan")))
    lines.append(f"held-out figures: mean [min-max] over seeds; chance T->I R@1 {results[0]['chance']:.4f}, "
                 f"centre-box grounding {results[0]['centre']:.4f}, text->region R@1 {region_chance[0]:.4f}, "
                 f"region->text R@1 {region_chance[1]:.4f}; training losses: the first logged value (mean over seeds) "
                 f"-> the mean of the last three (mean [min-max]), ITM's chance entropy {ITM_CHANCE_ENTROPY}; "
                 f"itm_neg_sim: mean over the run of the drawn image-text ITM negatives' similarity")
    for r in results:
        if r.get("neighbours"):
            grouped, drawn = r["neighbours"]
            lines.append(f"{r['variant']} seed {r['seed']}: image-text batches of the second half, mean cosine to the "
                         f"nearest sample in the batch by the grouping features: {grouped:.3f} as grouped, {drawn:.3f} "
                         f"in random batches of the same steps")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="options to run (default: all; `off` is the demo as shipped)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--max-steps", type=int, default=400, help="steps per run (default: the demo's 400)")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "runs/compare",
                        help="folder of the runs and their result.json files (default: runs/compare)")
    parser.add_argument("--report", action="store_true",
                        help="print the table of the runs already finished; train none")
    args = parser.parse_args(argv)
    if not args.report and not any((REPO_ROOT / "runs/demo/shards/image/train").glob("*.tar")):
        parser.error("no demo shards under runs/demo/shards: build them with `bash scripts/demo_data.sh runs/demo`")

    def log(line: str) -> None:
        print(f"[compare {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    results = []
    for seed in args.seeds:  # seed by seed: a partial comparison still has every variant's first seeds
        for variant in args.variants:
            directory = args.results / f"{variant}-seed{seed}"
            done = directory / "result.json"
            if done.exists():
                result = json.loads(done.read_text())
                if "neighbours" not in result:  # results of an earlier version of this script
                    result["neighbours"] = batch_neighbours(directory / "train")
                    done.write_text(json.dumps(result, indent=1))
                results.append(result)
                continue
            if args.report:
                continue
            log(f"{variant} seed {seed}: training in {directory}")
            result = run_variant(variant, seed, directory, args.max_steps, log)
            done.write_text(json.dumps(result, indent=1))
            results.append(result)
    if not results:
        parser.error(f"no finished run of {' '.join(args.variants)} with seeds "
                     f"{' '.join(map(str, args.seeds))} under {args.results}")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
