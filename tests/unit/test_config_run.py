"""The run, model and data configs read together: a value set with `--set` is the value the same
text gives in the YAML file, in every section; and every bad value is refused before training
with exit code 2 and one line naming the key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from data_pipeline.config import ConfigError
from data_pipeline.spec import load_data_spec, parse_data_spec
from training import pretrain
from training.engine.run_config import check_sections, load_run_config
from training.model import CONFIG_DIR, load_model_config
from training.model.model_config import model_config_from_dict

SENTINEL = "VALUE_UNDER_TEST"


def data_section() -> dict:
    return {
        "image_res": 64, "patch_size": 16,
        "text": {"tokenizer": "tok", "max_tokens": 24},
        "corpora": [
            {"name": "images", "kind": "image_text", "shards": "shards/img-{0..1}.tar"},
            {"name": "regions", "kind": "region", "shards": ["shards/img-0.tar"]},
            {"name": "videos", "kind": "video_text", "shards": "shards/vid-0.tar", "options": {"frames": 2}},
        ],
    }


def run_section() -> dict:
    return {"model": "model.yaml", "data": "data.yaml", "deepspeed": "ds.json",
            "run": {"name": "t", "output_dir": "out", "max_steps": 10},
            "optim": {"lr": 0.001, "warmup_steps": 2, "precision": "fp32"}}


def put(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        tree = tree[int(part)] if isinstance(tree, list) else tree.setdefault(part, {})
    tree[parts[-1]] = value


def write_configs(directory: Path, key: str | None = None, text: str | None = None) -> Path:
    """A run with model.yaml, data.yaml and ds.json beside it, the files the data names (an
    empty tokenizer folder, empty shards), and, when KEY is given, TEXT written verbatim as
    KEY's value in the file that holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tok").mkdir(exist_ok=True)
    (directory / "shards").mkdir(exist_ok=True)
    for name in ("img-0.tar", "img-1.tar", "vid-0.tar"):
        (directory / "shards" / name).write_bytes(b"")
    (directory / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    files = {"run.yaml": run_section(), "model.yaml": yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text()),
             "data.yaml": data_section()}
    if key is not None:
        section, _, rest = key.partition(".")
        name, inner = (f"{section}.yaml", rest) if section in ("model", "data") else ("run.yaml", key)
        put(files[name], inner, SENTINEL)
    for name, content in files.items():
        dumped = yaml.safe_dump(content, sort_keys=False)
        (directory / name).write_text(dumped.replace(SENTINEL, text) if key is not None else dumped)
    return directory / "run.yaml"


def walk(node, dotted: str):
    for part in dotted.split("."):
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node[part]
        else:
            node = getattr(node, {"kinds": "kind_settings"}.get(part, part))
    return node


def typed_value(config, key: str):
    """KEY's value once its section is built by its owner."""
    section, _, rest = key.partition(".")
    if section == "model":
        return walk(model_config_from_dict(config.model), rest)
    if section == "data":
        return walk(parse_data_spec(config.data, root=config.reference_dirs["data"]), rest)
    return walk(config, key)


def same_type(a, b) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same_type(x, y) for x, y in zip(a, b))
    return type(a) is type(b)


SECTIONS = {
    "run": [("run.export_on_finish", "true", True), ("run.seed", "7", 7)],
    "optim": [("optim.lr", "1e-4", 1e-4), ("optim.weight_decay", "7e-2", 0.07), ("optim.min_lr_ratio", "5e-1", 0.5),
              ("optim.betas", "[9e-1, 0.98]", [0.9, 0.98]), ("optim.global_batch", "{image_text: 8}", {"image_text": 8})],
    "checkpoint": [("checkpoint.allow_config_change", "true", True), ("checkpoint.keep_every", "5", 5)],
    "logging": [("logging.tensorboard", "false", False), ("logging.progress_bar", "null", None)],
    "guard": [("guard.signals", "[SIGUSR2, SIGTERM]", ["SIGUSR2", "SIGTERM"])],
    "eval": [("eval.image_shards", "[a.tar, b.tar]", ["a.tar", "b.tar"]), ("eval.max_samples", "8", 8)],
    "model": [("model.temperature", "7e-2", 0.07), ("model.temperature_max", "5e-1", 0.5),
              ("model.activation_checkpointing", "true", True)],
    "model.vision": [("model.vision.drop_path_rate", "1e-4", 1e-4),
                     ("model.vision.timm_kwargs.img_size", "[64, 64]", [64, 64])],
    "model.text": [("model.text.dropout", "5e-1", 0.5), ("model.text.layer_norm_eps", "1e-4", 1e-4)],
    "model.losses": [("model.losses.weights.region.giou", "7e-2", 0.07),
                     ("model.losses.same_text_positive", "false", False)],
    "data": [("data.training", "false", False), ("data.seed", "3", 3)],
    "data.text": [("data.text.mask_prob", "5e-1", 0.5), ("data.text.span_prob", "7e-2", 0.07),
                  ("data.text.whole_word", "false", False)],
    "data.loader": [("data.loader.retry_delay_s", "1e-4", 1e-4)],
    "data.kinds": [("data.kinds.video_text.ratio", "5e-1", 0.5)],
    "data.corpora": [("data.corpora.0.weight", "5e-1", 0.5),
                     ("data.corpora.0.options.crop_scale", "[5e-1, 1]", [0.5, 1.0]),
                     ("data.corpora.0.options.rand_augment", "false", False),
                     ("data.corpora.1.options.min_perc_in_image", "7e-2", 0.07),
                     ("data.corpora.2.options.decode_timeout_s", "1e-4", 1e-4)],
}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_set_gives_the_values_the_file_gives(tmp_path, section):
    base = write_configs(tmp_path / "base")
    for key, text, expected in SECTIONS[section]:
        from_set = typed_value(load_run_config(base, [f"{key}={text}"]), key)
        in_file = write_configs(tmp_path / key, key, text)
        from_file = typed_value(load_run_config(in_file), key)
        assert from_set == from_file == expected, (key, from_set, from_file)
        assert same_type(from_set, expected) and same_type(from_file, expected), (key, from_set, from_file)
        # The owners' own file loaders read the same text the same way.
        if key.startswith("model."):
            assert walk(load_model_config(in_file.parent / "model.yaml"), key[len("model."):]) == expected
        if key.startswith("data."):
            assert walk(load_data_spec(in_file.parent / "data.yaml"), key[len("data."):]) == expected


def test_the_base_run_is_valid(tmp_path):
    config = load_run_config(write_configs(tmp_path))
    model, data = check_sections(config)
    assert model.vision.image_size == data.image_res == 64
    assert data.corpora[0].shards == [str(tmp_path / "shards/img-{0..1}.tar")]
    assert data.text.tokenizer == str(tmp_path / "tok")


BAD_VALUES = [
    ("optim.global_batch.region=-8", "optim.global_batch.region: must be >= 1, got -8"),
    ("optim.global_batch.audio=8", "optim.global_batch.audio: unknown key"),
    ("optim.warmup_steps=-5", "optim.warmup_steps: must be >= 0, got -5"),
    ("optim.warmup_steps=2.5", "optim.warmup_steps: expected int, got float (2.5)"),
    ("optim.weight_decay=-1e-2", "optim.weight_decay: must be in [0, 10], got -0.01"),
    ("optim.grad_clip=-1", "optim.grad_clip: must be in [0, 1e+06], got -1.0"),
    ("optim.min_lr_ratio=5", "optim.min_lr_ratio: must be in [0, 1], got 5.0"),
    ("optim.betas=[0.9,1.0]", "optim.betas[1]: must be in [0, 1), got 1.0"),
    ("optim.betas=[-0.1,0.9]", "optim.betas[0]: must be in [0, 1), got -0.1"),
    ("optim.betas=[0.9]", "optim.betas: expected 2 items"),
    ("optim.betas=[0.9,", "optim.betas: --set value '[0.9,': not valid YAML"),
    ("optim.lr=0", "optim.lr: must be in (0, 10], got 0.0"),
    ("optim.lr=1e300", "optim.lr: must be in (0, 10], got 1e+300"),
    ("deepspeed.zero_optimization.stage=true", "deepspeed.zero_optimization.stage: must be 0, 1, 2 or 3, got True"),
    ("optim.lr=true", "optim.lr: expected float, got bool (True)"),
    ("optim.lr=.nan", "optim.lr: must be a finite number, got nan"),
    ("optim.betas=[0.9,.nan]", "optim.betas[1]: must be a finite number, got nan"),
    ("optim.grad_clip=.inf", "optim.grad_clip: must be a finite number, got inf"),
    ("data.loader.max_bad_fraction=.nan", "data.loader.max_bad_fraction: must be a finite number, got nan"),
    ("data.corpora.0.options.crop_scale=[.nan,1]", "data.corpora[0].options.crop_scale[0]: must be a finite number, "
                                                   "got nan"),
    ("data.kinds.region.ratio=.nan", "data.kinds.region.ratio: must be a finite number, got nan"),
    ("model.losses.weights.region.itc=.nan", "model.losses.weights.region.itc: must be a finite number, got nan"),
    ("optim.grad_accum=0", "optim.grad_accum: must be >= 1, got 0"),
    ("optim.schedule=step", "optim.schedule: must be one of linear, cosine, got 'step'"),
    ("run.output_dir=", "run.output_dir: must not be empty"),
    ("run.output_dir=''", "run.output_dir: must not be empty"),
    ("run.max_steps=0", "run.max_steps: must be >= 1, got 0"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last: must be >= 1, got 0"),
    ("guard.signals=[SIGKILL]", "guard.signals[0]: SIGKILL cannot be caught"),
    ("guard.signals=[SIGUSR1,STOP]", "guard.signals[1]: SIGSTOP cannot be caught"),
    ("guard.signals=[SIGNOPE]", "guard.signals[0]: unknown signal name 'SIGNOPE'"),
    ("guard.signals=[SIGTERM,SIGSEGV]", "guard.signals[1]: SIGSEGV reports a fault of the process itself"),
    ("guard.signals=[SIGBUS]", "guard.signals[0]: SIGBUS reports a fault of the process itself"),
    ("eval.every_steps=5", "eval.every_steps: 5, but no eval shards are given"),
    ("eval.itm_top_k=-1", "eval.itm_top_k: must be >= 0, got -1"),
    ("logging.report_to=[jsonl,mlflow]", "logging.report_to[1]: must be one of"),
    ("logging.wandb.mode=disabled", "logging.wandb.mode: must be one of"),
    ("model.text.vocab_size=-1", "model.text.vocab_size: must be in [1, 2000000], got -1"),
    ("model.text.hidden_size=0", "model.text.hidden_size: must be in [1, 16384], got 0"),
    ("model.text.num_heads=0", "model.text.num_heads: must be in [1, 512], got 0"),
    ("model.text.intermediate_size=-64", "model.text.intermediate_size: must be in [1, 65536], got -64"),
    ("model.text.max_position_embeddings=0", "model.text.max_position_embeddings: must be in [1, 65536], got 0"),
    ("model.text.dropout=1.5", "model.text.dropout: must be in [0, 1), got 1.5"),
    ("model.vision.image_size=0", "model.vision.image_size: must be in [1, 4096], got 0"),
    ("model.vision.max_frames=0", "model.vision.max_frames: must be in [1, 1024], got 0"),
    ("model.embed_dim=-16", "model.embed_dim: must be in [1, 16384], got -16"),
    ("model.temperature=7", "model.temperature_min: need 0 < temperature_min <= temperature <= temperature_max"),
    ("model.vision.pretrained=nowhere.pth", "model.vision.pretrained: nowhere.pth does not exist"),
    ("model.init_from=nowhere.th", "model.init_from: nowhere.th does not exist"),
    ("data.text.mask_prob=5", "data.text.mask_prob: must be in [0, 1], got 5.0"),
    ("data.text.max_tokens=200", "data.text.max_tokens: 200 exceeds the model's text.max_position_embeddings (128)"),
    ("data.corpora.2.options.frames=9", "data.corpora[2].options.frames: 9 exceeds the model's vision.max_frames (4)"),
    ("data.corpora.0.options.crop_scale=[0.9,0.5]", "data.corpora[0].options.crop_scale: expected [low, high] with "
                                                    "low <= high"),
    ("data.corpora.1.batch_size=0", "data.corpora[1].batch_size: must be >= 1, got 0"),
    ("data.kinds.region.ratio=0", "data.kinds.region.ratio: must be in (0, 1], got 0.0"),
    ("data.loader.num_workers=-1", "data.loader.num_workers: must be >= 0, got -1"),
    ("data.text.tokenizer=missing-tok", "data.text.tokenizer: {dir}/missing-tok is not a directory"),
    ("data.corpora.0.shards=shards/img-{{0..2}}.tar", "data.corpora[0].shards: shard '{dir}/shards/img-2.tar' does not "
                                                    "exist"),
    ("checkpoint.resume={dir}/nowhere", "checkpoint.resume: {dir}/nowhere is not a complete checkpoint folder"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o.split("=")[0] for o, _ in BAD_VALUES])
def test_bad_values_stop_the_trainer_with_exit_2_naming_the_key(tmp_path, capsys, override, message):
    run = write_configs(tmp_path)
    override, message = override.format(dir=tmp_path), message.format(dir=tmp_path)
    assert pretrain.main(["--config", str(run), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"x2vlm-pretrain: {run}: {message}"), err
    assert err.count("\n") == 1, err


def test_report_to_names_the_reporters_and_wandb_needs_its_package(tmp_path, monkeypatch):
    import importlib.util

    run = write_configs(tmp_path)
    assert load_run_config(run).logging.reporters() == {"jsonl", "tensorboard"}
    assert load_run_config(run, ["logging.report_to=[wandb]"]).logging.reporters() == {"jsonl", "wandb"}
    # tensorboard: false, the switch of older run configs, turns TensorBoard off whatever report_to says.
    assert load_run_config(run, ["logging.tensorboard=false", "logging.report_to=[tensorboard, wandb]"]
                           ).logging.reporters() == {"jsonl", "wandb"}
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"logging\.report_to: wandb, but the wandb package is not installed"):
        load_run_config(run, ["logging.report_to=[jsonl, wandb]"])
    load_run_config(run)  # without wandb in report_to, the package is not looked for


def test_an_output_folder_that_cannot_be_written_stops_before_anything_starts(tmp_path, capsys):
    run = write_configs(tmp_path)
    (tmp_path / "a_file").write_text("")
    assert pretrain.main(["--config", str(run), "--set", f"run.output_dir={tmp_path / 'a_file' / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err == f"x2vlm-pretrain: {run}: run.output_dir: {tmp_path / 'a_file' / 'out'}: cannot write there " \
                  f"(Not a directory)\n"


def test_bad_resume_flag_is_a_configuration_error(tmp_path, capsys):
    run = write_configs(tmp_path)
    assert pretrain.main(["--config", str(run), "--resume", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith(f"x2vlm-pretrain: --resume: {tmp_path / 'nowhere'} is not a complete "
                                              f"checkpoint folder")


def test_init_from_flag_is_the_setting(tmp_path, capsys, monkeypatch):
    run = write_configs(tmp_path)
    weights = tmp_path / "x2vlm base: 4m.th"  # a name that YAML would not read as a plain string
    weights.write_bytes(b"")
    seen = []

    class Recording:
        def __init__(self, config, resume, extensions=()):
            seen.append(config.model["init_from"])

        def run(self):
            return 0

        def close(self):
            pass

    monkeypatch.setattr(pretrain, "Trainer", Recording)
    assert pretrain.main(["--config", str(run), "--init-from", str(weights)]) == 0
    assert model_config_from_dict(load_run_config(run, [f"model.init_from={tmp_path}"]).model).init_from == str(tmp_path)
    assert seen == [str(weights)]
    assert pretrain.main(["--config", str(run), "--init-from", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"x2vlm-pretrain: {run}: model.init_from: {tmp_path / 'nowhere'} does not exist\n"


class _Failing:
    def __init__(self, error: Exception):
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error


def test_only_the_projects_config_errors_exit_2(tmp_path, capsys, monkeypatch):
    run = write_configs(tmp_path)
    # A ValueError from a library (DeepSpeed, timm, the tokenizer) is a failure, not a config error.
    monkeypatch.setattr(pretrain, "Trainer", _Failing(ValueError("train_batch_size is not equal to ...")))
    with pytest.raises(ValueError, match="train_batch_size"):
        pretrain.main(["--config", str(run)])
    monkeypatch.setattr(pretrain, "Trainer", _Failing(ConfigError("optim.global_batch.region: cannot be split")))
    assert pretrain.main(["--config", str(run)]) == 2
    assert capsys.readouterr().err == "x2vlm-pretrain: optim.global_batch.region: cannot be split\n"


def test_eval_cli_reports_usage_and_config_errors_only(monkeypatch, capsys, tmp_path):
    from training import eval as cli

    args = ["--model-config", "tiny", "--tokenizer", str(tmp_path), "--image-shards", "x.tar"]
    monkeypatch.setattr(cli, "run", _Failing(ValueError("a timm failure")))
    with pytest.raises(ValueError, match="timm"):
        cli.main(args)
    monkeypatch.setattr(cli, "run", _Failing(ConfigError("model.x: unknown key")))
    assert cli.main(args) == 2
    assert capsys.readouterr().err == "x2vlm-eval: model.x: unknown key\n"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args + ["--batch-size", "0"])
    assert exit_info.value.code == 2 and "--batch-size: must be >= 1, got 0" in capsys.readouterr().err


def test_too_few_shards_for_the_ranks_is_a_config_error(tmp_path):
    from data_pipeline.loader.corpus_loader import CorpusLoader

    write_configs(tmp_path)
    spec = parse_data_spec(data_section(), root=tmp_path)
    with pytest.raises(ConfigError, match="corpus videos: shards: 1 shards for 2 ranks x 1 workers"):
        CorpusLoader(spec.corpora[2], spec, rank=0, world_size=2, num_workers=1)


def test_signal_names_are_read_as_the_handler_reads_them():
    from data_pipeline.config import build
    from training.engine.run_config import GuardSection

    assert build(GuardSection, {"signals": ["usr1", "SIGTERM", "HUP"]}).signals == ["usr1", "SIGTERM", "HUP"]
    with pytest.raises(ConfigError, match=r"^guard.signals\[0\]: SIGKILL cannot be caught"):
        build(GuardSection, {"signals": ["KILL"]}, "guard")
    with pytest.raises(ConfigError, match=r"^guard.signals\[1\]: SIGSTOP cannot be caught"):
        build(GuardSection, {"signals": ["usr1", "sigstop"]}, "guard")


def test_a_run_states_its_world_size_and_global_batch(tmp_path):
    from training.engine.trainer import apply_global_batch, batch_summary

    config = load_run_config(write_configs(tmp_path), ["optim.global_batch.region=12", "optim.grad_accum=2"])
    _, data = check_sections(config)
    apply_global_batch(data, config, world_size=3)
    assert batch_summary(data, 3, config.optim.grad_accum) == (
        "[run] world size 3 x grad_accum 2; global batch (samples per optimizer step when the corpus is drawn): "
        "images (image_text) 192, regions (region) 12, videos (video_text) 192")
