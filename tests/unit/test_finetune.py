"""Fine-tuning's configuration, in process: the task registry, the presets under
configs/finetune (each loads and fits its task), the checks that refuse a config of another
task, named eval sets, the box-only region forward of grounding, and the command line up to
where training would start. The runs themselves are in tests/integration/test_finetune_runs.py."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from data_pipeline.config import ConfigError, build
from tiny_batches import image_batch, region_batch
from training import finetune
from training.evaluation.eval_sets import eval_data_spec
from training.tasks.finetuning import TASKS, ForwardingTask
from training.extensions.finetune_report import before_after
from training.model import create_model
from training.engine.run_config import EvalSection, load_run_config
from training.objectives.settings import parse_loss_settings
from training.tasks.task import Task

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO_ROOT / "configs/finetune").glob("*.yaml"))


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """What --model checks and reads before training: a folder with the demo model's config,
    a weights file and a tokenizer folder."""
    folder = tmp_path / "model"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "model.yaml").write_text((REPO_ROOT / "configs/model/demo.yaml").read_text())
    return folder


def load_preset(path: Path, task: str, folder: Path, *overrides: str):
    return load_run_config(path, finetune.model_overrides(folder, TASKS[task]) + list(overrides))


def test_task_loss_weights_turn_on_only_the_tasks_terms():
    retrieval, grounding = TASKS["retrieval"].loss_weights(), TASKS["grounding"].loss_weights()
    assert retrieval == {"image": {"itc": 1.0, "itm": 1.0, "mlm": 0.0, "mim": 0.0, "lm": 0.0, "itc_cons": 0.0},
                         "region": {"itc": 0.0, "itm": 0.0, "mlm": 0.0, "bbox": 0.0, "giou": 0.0, "itc_cons": 0.0},
                         "video": {"itc": 1.0, "itm": 1.0, "mlm": 0.0, "itc_cons": 0.0}}
    assert grounding == {"image": {"itc": 0.0, "itm": 0.0, "mlm": 0.0, "mim": 0.0, "lm": 0.0, "itc_cons": 0.0},
                         "region": {"itc": 0.0, "itm": 0.0, "mlm": 0.0, "bbox": 1.0, "giou": 1.0, "itc_cons": 0.0},
                         "video": {"itc": 0.0, "itm": 0.0, "mlm": 0.0, "itc_cons": 0.0}}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_fits_its_task(preset, model_folder):
    task = preset.stem.split("_")[0]
    config = load_preset(preset, task, model_folder)
    TASKS[task].check(config)
    assert config.model["init_from"] == str(model_folder.resolve())
    assert config.model["losses"]["weights"] == TASKS[task].loss_weights()
    assert config.data["text"]["tokenizer"] == str(model_folder.resolve() / "tokenizer")
    assert config.run.export_on_finish
    assert TASKS[task].eval_sets(config)
    if "demo" not in preset.stem:
        # X²-VLM's recipes: retrieval and grounding 10 epochs with a 10 % linear warm-up, captioning
        # 5 epochs with 5 %; an evaluation every epoch.
        epochs, warm_up = (5, 0.05) if task == "captioning" else (10, 0.1)
        assert config.optim.schedule == "linear"
        assert config.optim.warmup_steps == round(warm_up * config.run.max_steps)
        assert config.eval.every_steps == round(config.run.max_steps / epochs)
    assert config.eval.captioning == (task == "captioning")


def test_a_preset_of_another_task_is_refused_naming_the_corpus(model_folder):
    config = load_preset(REPO_ROOT / "configs/finetune/retrieval_demo.yaml", "grounding", model_folder)
    with pytest.raises(ConfigError, match=r"^data\.corpora\[0\]\.kind: image_text: the grounding task trains on "
                                          r"region corpora only"):
        TASKS["grounding"].check(config)


def test_a_task_needs_weights_a_held_out_set_of_its_kind_and_an_evaluation(model_folder):
    preset = REPO_ROOT / "configs/finetune/grounding_demo.yaml"
    task = TASKS["grounding"]
    config = load_preset(preset, "grounding", model_folder, "model.init_from=null")
    with pytest.raises(ConfigError, match=r"^model\.init_from: not set"):
        task.check(config)
    config = load_preset(preset, "grounding", model_folder, "eval.region_shards=[]",
                         'eval.sets=[{name: held_out_images, kind: image_text, shards: ["x/*.tar"]}]')
    with pytest.raises(ConfigError, match=r"^eval\.sets: no held-out region set"):
        task.check(config)
    config = load_preset(preset, "grounding", model_folder, "eval.every_steps=0")
    with pytest.raises(ConfigError, match=r"^eval\.every_steps: 0"):
        task.check(config)


def test_figures_are_the_tasks_metrics_of_its_sets(model_folder):
    config = load_preset(REPO_ROOT / "configs/finetune/grounding_demo.yaml", "grounding", model_folder,
                         "eval.region_shards=[r/*.tar]",
                         'eval.sets=[{name: demo_refcoco_val, kind: region, shards: ["v/*.tar"]}, '
                         '{name: held_out_images, kind: image_text, shards: ["i/*.tar"]}]')
    metrics = {"region/grounding_acc": 0.5, "region/mean_iou": 0.4, "demo_refcoco_val/grounding_acc": 0.25,
               "held_out_images/img_r1": 0.75}
    assert TASKS["grounding"].figures(metrics, config) == {"region/grounding_acc": 0.5,
                                                           "demo_refcoco_val/grounding_acc": 0.25}
    assert before_after({"a": 0.125}, {"a": 0.5, "b": 0.25}) == "a 0.1250 -> 0.5000, b 0.2500"


def test_captioning_turns_on_the_decoder_alone_and_reports_cider_and_bleu(model_folder):
    task = TASKS["captioning"]
    assert {batch: [t for t, w in terms.items() if w] for batch, terms in task.loss_weights().items()} == {
        "image": ["lm"], "region": [], "video": []}
    preset = REPO_ROOT / "configs/finetune/captioning_demo.yaml"
    config = load_preset(preset, "captioning", model_folder)
    metrics = {"image/cider": 1.25, "image/bleu4": 0.25, "image/img_r1": 0.5, "image/constant_cider": 0.5}
    assert task.figures(metrics, config) == {"image/cider": 1.25, "image/bleu4": 0.25}
    with pytest.raises(ConfigError, match=r"^eval\.captioning: the captioning task needs True"):
        task.check(load_preset(preset, "captioning", model_folder, "eval.captioning=false"))


def test_named_eval_sets_are_checked_and_become_corpora_of_their_names(tmp_path):
    section = build(EvalSection, {"every_steps": 5, "sets": [
        {"name": "refcoco_val", "kind": "region", "shards": ["val/*.tar"]},
        {"name": "refcoco_testA", "kind": "region", "shards": ["testA/*.tar"]}]}, "eval")
    assert [s.name for s in section.sets] == ["refcoco_val", "refcoco_testA"]
    for sets, key, problem in [
            ([{"name": "a", "kind": "region", "shards": ["x"]}, {"name": "a", "kind": "region", "shards": ["y"]}],
             "eval.sets[1].name", "'a' is taken"),
            ([{"name": "region", "kind": "region", "shards": ["x"]}], "eval.sets[0].name", "'region' is taken"),
            ([{"name": "a/b", "kind": "region", "shards": ["x"]}], "eval.sets[0].name", "must not contain '/'"),
            ([{"name": "a", "kind": "audio", "shards": ["x"]}], "eval.sets[0].kind", "must be one of"),
            ([{"name": "a", "kind": "region", "shards": []}], "eval.sets[0].shards", "must not be empty")]:
        with pytest.raises(ConfigError, match=f"^{re.escape(key)}: .*{re.escape(problem)}"):
            build(EvalSection, {"sets": sets}, "eval")
    tokenizer = tmp_path / "tokenizer"
    section.image_shards = ["i/*.tar"]
    spec = eval_data_spec(str(tokenizer), 64, 16, section.named_sets())
    assert [(c.name, c.kind, c.shards) for c in spec.corpora] == [
        ("image", "image_text", ["i/*.tar"]), ("refcoco_val", "region", ["val/*.tar"]),
        ("refcoco_testA", "region", ["testA/*.tar"])]


def test_fine_tuning_forwards_leave_out_the_terms_that_weigh_zero_and_compute_the_others_the_same():
    model = create_model("tiny").eval()  # no dropout: every forward sees the same network
    batches = {"image": image_batch(0), "region": region_batch(1)}

    def forward(weights: dict):
        task = Task(model, parse_loss_settings({"weights": weights}))
        torch.manual_seed(0)  # the same ITM hard negatives drawn
        with torch.no_grad():
            return task(batches)

    every = forward({})["losses"]
    # retrieval: no MLM; grounding: the box terms alone
    out = forward({"image": {"mlm": 0.0}, "region": {"itc": 0.0, "itm": 0.0, "mlm": 0.0}})
    assert {kind: sorted(terms) for kind, terms in out["losses"].items()} == {"image": ["itc", "itm"],
                                                                              "region": ["bbox", "giou"]}
    assert out["figures"]["region"] == {} and "region" not in out["features"]
    for kind, terms in out["losses"].items():
        for term, value in terms.items():
            assert torch.equal(value, every[kind][term]), (kind, term)
    torch.testing.assert_close(out["loss"], sum(v for terms in out["losses"].values() for v in terms.values()))


def test_command_line_refuses_a_folder_that_is_not_a_model_folder(tmp_path, capsys):
    code = finetune.main(["--task", "retrieval", "--config", str(REPO_ROOT / "configs/finetune/retrieval_demo.yaml"),
                          "--model", str(tmp_path)])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"x2vlm-finetune: --model {tmp_path}: not a model folder (missing model.safetensors, "
                            f"model.yaml, tokenizer)")
    assert len(error.splitlines()) == 1


def test_command_line_refuses_a_config_of_another_task_before_training(tmp_path, model_folder, capsys):
    config = REPO_ROOT / "configs/finetune/retrieval_demo.yaml"
    code = finetune.main(["--task", "grounding", "--config", str(config), "--model", str(model_folder),
                          "--set", f"run.output_dir={tmp_path / 'out'}"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"x2vlm-finetune: {config}: data.corpora[0].kind: image_text: the grounding task trains on region corpora only")
    assert not (tmp_path / "out").exists()


def test_a_task_a_plug_in_registers_is_found_through_the_recipes_plugins(tmp_path, model_folder, capsys):
    plugin = tmp_path / "toy_task.py"
    plugin.write_text("from training.tasks.finetuning import TrainingTask, register\n\n\n"
                      "def register_task():\n"
                      "    register(TrainingTask(name='box-only', summary='the box terms alone on region corpora',\n"
                      "                          kinds=('region',), terms={'region': ('bbox',)}))\n")
    recipe = tmp_path / "recipe.yaml"
    text = (REPO_ROOT / "configs/finetune/retrieval_demo.yaml").read_text()
    recipe.write_text(text.replace("deepspeed: ../deepspeed/zero2.json",
                                   f"deepspeed: {REPO_ROOT / 'configs/deepspeed/zero2.json'}")
                      .replace("root: ../..", f"root: {REPO_ROOT}") + "\nplugins: [toy_task.py:register_task]\n")
    try:
        code = finetune.main(["--task", "box-only", "--config", str(recipe), "--model", str(model_folder),
                              "--set", f"run.output_dir={tmp_path / 'out'}"])
        # The plug-in's task checked the recipe: its corpora are not of the task's kind.
        assert code == 2
        assert capsys.readouterr().err.strip().endswith(
            "data.corpora[0].kind: image_text: the box-only task trains on region corpora only")
    finally:
        TASKS.pop("box-only", None)


FORWARDED = []


def main(argv):  # the command a forwarding task of the test runs
    FORWARDED.append(argv)
    return 7


def test_a_forwarding_task_hands_its_arguments_to_its_command(monkeypatch):
    monkeypatch.setitem(TASKS, "echo", ForwardingTask("echo", "a test task", __name__))
    assert finetune.main(["--task", "echo", "--classes", "a.txt", "FOLDER"]) == 7
    assert FORWARDED == [["--classes", "a.txt", "FOLDER"]]


def test_zero_shot_is_a_task_of_x2vlm_finetune(tmp_path, capsys):
    # x2vlm-zero-shot's own one-line refusal of an image tree without class folders
    assert finetune.main(["--task", "zero-shot", str(tmp_path / "no_model"), "--images", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"x2vlm-zero-shot: {tmp_path}: no class folders")
