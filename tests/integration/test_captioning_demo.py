"""Captioning on the demo: a short captioning fine-tune of the demo run's model (the session's
`trained_demo`) through the trainer, with model.init_from and only the image/lm loss on (ITC,
ITM and MLM weigh 0); its loss falls, and its greedy captions of the held-out images beat a
constant caption on CIDEr-D and name the right colour and shape far more often than chance."""
from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

import yaml

from engine_support import REPO_ROOT, run_ranks
from training.evaluation.caption_metrics import caption_metrics
from training.evaluation.captioning import CaptioningSettings, generate_eval_captions
from training.evaluation.data import eval_data_spec, eval_stream
from training.model_folder import load_model_folder

STEPS = 60
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")  # data_pipeline/demo_corpus/scenes.py
SHAPES = ("circle", "square", "triangle", "diamond", "star")
_NAMED = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")


def named_shapes(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a demo caption names: 'a large red circle' names (red, circle)."""
    return set(_NAMED.findall(text.lower()))


def fine_tune_config(demo_root: Path, export: Path, directory: Path) -> Path:
    """The demo run's model and image corpus, starting from EXPORT, training captioning only."""
    configs = REPO_ROOT / "configs"
    model = yaml.safe_load((configs / "model/demo.yaml").read_text())
    model["init_from"] = str(export)
    model["losses"]["weights"] = {"image": {"itc": 0.0, "itm": 0.0, "mlm": 0.0, "lm": 1.0}}
    data = yaml.safe_load((configs / "data/demo.yaml").read_text())
    data["root"] = str(demo_root)
    data["kinds"] = {"image_text": {"ratio": 1.0}}
    data["corpora"] = [c for c in data["corpora"] if c["kind"] == "image_text"]
    data["corpora"][0]["batch_size"] = 32
    data["loader"]["shuffle_buffer"] = 64
    run = {"model": model, "data": data, "deepspeed": str(configs / "deepspeed/zero2.json"),
           "run": {"name": "caption", "output_dir": str(directory / "out"), "seed": 1, "max_steps": STEPS,
                   "export_on_finish": True},
           "optim": {"lr": 0.0005, "warmup_steps": 5, "schedule": "cosine", "precision": "fp32"},
           "checkpoint": {"every_steps": STEPS}, "logging": {"every_steps": 1, "tensorboard": False}}
    path = directory / "run.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(run, sort_keys=False))
    return path


def fine_tune_and_caption(demo_root: Path, export: Path, directory: Path) -> dict:
    """Runs the fine-tune (one rank) and captions the held-out images; the figures."""
    config = fine_tune_config(demo_root, export, directory)
    codes, output = run_ranks(config, 1, "--resume", "none")
    assert codes == [0], output[-4000:]
    rows = [json.loads(line) for line in (directory / "out/metrics.jsonl").read_text().splitlines()]
    lm = [row["image/lm"] for row in rows if row["kind"] == "train"]
    model = load_model_folder(directory / "out/export").model.eval()
    data = demo_root / "runs/demo"
    spec = eval_data_spec(str(data / "tokenizer"), 64, 16, [str(data / "shards/image/eval/*.tar")], max_tokens=40)
    candidates, references = generate_eval_captions(model, eval_stream(spec, spec.corpora[0]),
                                                    CaptioningSettings(max_len=30))
    train_captions = [a["caption"] for a in json.loads(
        (data / "corpus/annotations/coco_captions_train.json").read_text())["annotations"]]
    constant = collections.Counter(train_captions).most_common(1)[0][0]
    present = {key: set().union(*map(named_shapes, refs)) for key, refs in references.items()}

    def right(captions: dict[str, str]) -> float:
        return sum(bool(named_shapes(c)) and named_shapes(c) <= present[k] for k, c in captions.items()) / len(captions)

    constant_captions = {key: constant for key in references}
    return {"lm_first": sum(lm[:5]) / 5, "lm_last": sum(lm[-5:]) / 5,
            "model": {**caption_metrics(candidates, references), "right_shapes": right(candidates)},
            "constant": {**caption_metrics(constant_captions, references), "right_shapes": right(constant_captions),
                         "caption": constant},
            # A caption naming one random colour and shape names one of the image's with this probability.
            "chance_right_shapes": sum(len(p) for p in present.values()) / len(present) / (len(COLOURS) * len(SHAPES)),
            "examples": [(candidates[k], references[k][0]) for k in sorted(candidates)[:5]]}


def test_captioning_fine_tune_of_the_demo_model(trained_demo, tmp_path):
    figures = fine_tune_and_caption(trained_demo.root, trained_demo.export, tmp_path)
    print(json.dumps(figures, indent=1), file=sys.stderr)
    assert figures["lm_last"] < 0.6 * figures["lm_first"]
    assert figures["model"]["cider"] > 3 * figures["constant"]["cider"]
    assert figures["model"]["bleu4"] > figures["constant"]["bleu4"]
    assert figures["model"]["right_shapes"] >= max(0.5, 4 * figures["chance_right_shapes"])
