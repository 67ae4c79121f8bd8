"""A PNG of a run's curves from its metrics.jsonl: losses by kind and held-out metrics."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data_pipeline.logging_setup import configure_logging  # noqa: E402

LOSS_PANELS = {
    "total loss": ["loss"],
    "image-text": ["image/itc", "image/itm", "image/mlm"],
    "region": ["region/itc", "region/itm", "region/mlm", "region/bbox", "region/giou"],
    "video-text": ["video/itc", "video/itm", "video/mlm"],
}
EVAL_PANELS = {
    "image-text retrieval (held out)": ["image/img_r1", "image/img_r5", "image/txt_r1", "image/txt_r5"],
    "grounding (held out)": ["region/grounding_acc", "region/centre_baseline_acc"],
    "region-text retrieval (held out)": ["region/region_text/img_r1", "region/region_text/txt_r1",
                                         "region/region_text/img_r1_chance"],
    "video-text retrieval (held out)": ["video/img_r1", "video/txt_r1"],
}


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    train, evaluation = {}, {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        # A step logged again after a resume replaces the earlier line.
        (train if row["kind"] == "train" else evaluation)[row["step"]] = row
    return [train[s] for s in sorted(train)], [evaluation[s] for s in sorted(evaluation)]


def panels_of(train: list[dict], evaluation: list[dict]) -> list[tuple[str, list[str], list[dict]]]:
    """(title, keys, rows) of each panel that has a logged key, with only its logged keys."""
    panels = [(title, keys, train) for title, keys in LOSS_PANELS.items()]
    panels += [(title, keys, evaluation) for title, keys in EVAL_PANELS.items()]
    panels = [(t, [k for k in keys if any(k in r for r in rows)], rows) for t, keys, rows in panels]
    return [p for p in panels if p[1]]


def plot_curves(metrics_jsonl: Path, out: Path) -> Path:
    panels = panels_of(*read_metrics(metrics_jsonl))
    columns = 3
    rows_count = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows_count, columns, figsize=(5 * columns, 3.6 * rows_count), squeeze=False)
    for axis, (title, keys, rows) in zip(axes.flat, panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o" if title in EVAL_PANELS else None,
                      markersize=3, label=key)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Plot a run's losses and held-out metrics from its metrics.jsonl.")
    parser.add_argument("metrics", type=Path, help="metrics.jsonl written by the trainer")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    configure_logging()
    print(f"curves -> {plot_curves(args.metrics, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
