"""`x2vlm-shards build`: annotation files + media to WebDataset tar shards."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from ..io.digest import file_sha256
from .build_state import BuildState, BuildStateError, fingerprint, shard_name
from .keys import check_prefix
from .manifest import REJECTED, build_manifest, project_version, write_manifest, write_rejected
from .plan import AnnotationInput, plan_samples, split_into_shards
from .readers import FORMATS, annotation_file_problem
from .records import AnnotationError
from .sample_encoder import EncodeOptions
from .shard_job import ShardTask
from .worker_pool import run_shard_jobs

DESCRIPTION = """\
Read annotation files (and the images or videos they name under --media-root) and write
WebDataset tar shards PREFIX-000000.tar, ... into --output, with manifest.json (per-shard
sample count, bytes and sha256, totals, the command and the project version) and
rejected.jsonl (one line per rejected record, sample, caption or region, with its reason).

Several --annotations files merge into one sample per media file (captions, then regions).
--format is given once for all files or once per file, in the same order. Formats:
  jsonl           {"image": PATH, "captions": [..]} per line ("caption" / "text" for one)
  csv             header row with image / path and caption / text columns; .tsv is tab separated
  coco-captions   COCO captions_*.json
  coco-instances  COCO instances_*.json: boxes become regions labelled with the category name
  vg-regions      Visual Genome region_descriptions.json: phrase + box per region; image N is N.jpg
  refcoco         refer-toolkit refs(unc).p with instances.json beside it (read without running
                  anything: a pickle that asks for any class or function is refused)
  video-jsonl     {"video": PATH, "captions": [..], "start": S, "end": E} per line (start/end optional)

A sample holds the media (jpg / png / webp as stored, mp4), a json member (source, stored
width and height, captions, regions with [x, y, w, h] boxes in stored pixels, original
path and size; duration, fps, start, end and frames for video) and txt (the first
caption). Keys are PREFIX_<media path without extension>, with every character other than
letters, digits, '-' and '_' turned into '_'.

Each shard holds up to --samples-per-shard planned samples, less those rejected. Images
are decoded fully to check them and pass through unchanged unless --max-image-side is
exceeded; then they are resized (longer side = N) and re-encoded in their own format, and
boxes are scaled per axis by stored/original size. Boxes partly outside the image are
clipped. The shards are byte-identical for any --workers and after --resume.

Nothing outside --media-root is read: a media path that is absolute, climbs out with '..' or
leads out through a symbolic link is rejected. Malformed records (ids that are not integers
or strings, missing fields, values of the wrong type) and clip times that are not finite,
negative, not increasing or beyond the video are rejected, each with its reason.
"""


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser("build", help="build tar shards from annotation files and media",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", action="append", required=True, choices=FORMATS, metavar="FORMAT",
                        help=f"annotation format: {', '.join(FORMATS)}; once, or once per --annotations")
    parser.add_argument("--annotations", action="append", required=True, type=Path, metavar="FILE",
                        help="annotation file; repeat to merge several sources of the same media")
    parser.add_argument("--media-root", required=True, type=Path, metavar="DIR",
                        help="directory the media paths in the annotations are relative to")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR", help="directory for shards and manifest")
    parser.add_argument("--prefix", help="shard name prefix, key prefix and source name (default: the output directory's name)")
    parser.add_argument("--samples-per-shard", type=int, default=1000, metavar="N", help="planned samples per shard (default 1000)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default 1)")
    parser.add_argument("--max-image-side", type=int, metavar="N", help="resize images whose longer side exceeds N to N")
    parser.add_argument("--jpeg-quality", type=int, default=90, metavar="Q",
                        help="quality of re-encoded JPEG / WebP images (default 90)")
    parser.add_argument("--refcoco-split", action="append", default=[], metavar="SPLIT",
                        help="with refcoco, keep only refs of this split (repeatable; default: all)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted build in --output, keeping finished shards")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _usage_problem(args: argparse.Namespace) -> str | None:
    if len(args.format) not in (1, len(args.annotations)):
        return f"give --format once or once per --annotations ({len(args.annotations)} files, {len(args.format)} formats)"
    for path in args.annotations:
        problem = annotation_file_problem(path)
        if problem:
            return problem
    if not args.media_root.is_dir():
        return f"media root is not a directory: {args.media_root}"
    if not os.access(args.media_root, os.R_OK | os.X_OK):
        return f"media root is not readable: {args.media_root}"
    if args.output.exists() and not args.output.is_dir():
        return f"--output {args.output} exists and is not a directory"
    if args.samples_per_shard < 1:
        return f"--samples-per-shard must be at least 1, got {args.samples_per_shard}"
    if args.workers < 1:
        return f"--workers must be at least 1, got {args.workers}"
    if args.max_image_side is not None and args.max_image_side < 1:
        return f"--max-image-side must be at least 1, got {args.max_image_side}"
    if not 1 <= args.jpeg_quality <= 100:
        return f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}"
    return check_prefix(args.prefix)


def _fail(message: str) -> int:
    print(f"x2vlm-shards build: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    prefix_given = args.prefix is not None
    if not prefix_given:
        args.prefix = args.output.resolve().name
    problem = _usage_problem(args)
    if problem and problem.startswith("--prefix") and not prefix_given:
        problem += " (the default prefix is the --output directory's name; pass --prefix)"
    if problem:
        return _fail(problem)
    formats = args.format * len(args.annotations) if len(args.format) == 1 else args.format
    inputs = [AnnotationInput(fmt, path) for fmt, path in zip(formats, args.annotations)]
    try:
        samples, plan_rejected, input_counts = plan_samples(inputs, args.prefix, tuple(args.refcoco_split))
    except AnnotationError as error:
        return _fail(str(error))

    # Everything the shard bytes depend on; a resume must see the same.
    settings = {"prefix": args.prefix, "samples_per_shard": args.samples_per_shard,
                "max_image_side": args.max_image_side, "jpeg_quality": args.jpeg_quality,
                "refcoco_splits": args.refcoco_split, "media_root": str(args.media_root.resolve())}
    annotations = [{"format": i.format, "sha256": file_sha256(i.path)} for i in inputs]
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return _fail(f"cannot create --output {args.output}: {error.strerror}")
    state = BuildState(args.output, fingerprint({**settings, "annotations": annotations, "version": project_version()}))
    try:
        state.open(args.resume, args.prefix)
    except BuildStateError as error:
        return _fail(str(error))

    tasks = [ShardTask(shard_name(args.prefix, i), chunk) for i, chunk in enumerate(split_into_shards(samples, args.samples_per_shard))]
    finished = {task.name: state.finished(task.name) for task in tasks}
    pending = [task for task in tasks if finished[task.name] is None]
    options = EncodeOptions(args.media_root, args.prefix, args.max_image_side, args.jpeg_quality)
    with tqdm(total=len(samples), initial=len(samples) - sum(len(t.samples) for t in pending), unit=" samples",
              desc=f"shards {args.prefix}", disable=args.quiet, smoothing=0.1) as bar:
        for record in run_shard_jobs(pending, options, state, args.workers, bar.update):
            finished[record["name"]] = record
    records = [finished[task.name] for task in tasks]

    rejected = [r.to_json() for r in plan_rejected] + [entry for record in records for entry in record["rejected"]]
    command = shlex.join(["x2vlm-shards", *args.argv])
    manifest = build_manifest(command, settings, input_counts, args.prefix, records, len(rejected))
    write_rejected(args.output, rejected)
    write_manifest(args.output, manifest)
    totals = manifest["totals"]
    print(f"{totals['samples']} samples ({totals['captions']} captions, {totals['regions']} regions) in "
          f"{totals['shards']} shards under {args.output}; {len(rejected)} rejected, see {args.output / REJECTED}")
    return 0
