"""model.init_from in one process: a model started from a model folder computes its source's
losses exactly; an official-layout checkpoint starts it as its converted folder does; what
stayed random and what went unused is reported; a shape that does not fit names its key."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from official_layout import official_state_dict, write_official_checkpoint
from pipeline_helpers import demo_tokenizer  # noqa: F401
from tiny_batches import image_batch, region_batch
from training.folders.init_from import InitFromError, init_from
from training.model import create_model
from training.convert import main as convert_main
from training.tasks.task import Task
from training.folders.model_folder import ModelCard, write_model_folder


def _model(seed: int):
    torch.manual_seed(seed)
    return create_model("tiny", load_pretrained=False)


def _losses(model) -> dict[str, torch.Tensor]:
    """The training forward's loss terms on a fixed batch, the ITM negatives drawn from a fixed seed."""
    torch.manual_seed(123)
    out = Task.for_model(model.train())({"image": image_batch(seed=1), "region": region_batch(seed=2)})
    return {"loss": out["loss"].detach(), **{f"{kind}/{term}": value.detach()
                                             for kind, terms in out["losses"].items() for term, value in terms.items()}}


def _folder(model, path, tokenizer):
    return write_model_folder(path, dict(model.named_parameters()), model.config, tokenizer, ModelCard(source={}))


def test_a_model_started_from_a_folder_has_its_sources_losses_exactly(demo_tokenizer, tmp_path):
    source = _model(0)
    folder = _folder(source, tmp_path / "export", demo_tokenizer)
    target = _model(1)
    before = _losses(target)
    report = init_from(target, folder)
    expected, started = _losses(source), _losses(target)
    assert set(expected) == {"loss", "image/itc", "image/itm", "image/mlm", "region/itc", "region/itm", "region/mlm",
                             "region/bbox", "region/giou"}
    for name, value in expected.items():
        assert torch.equal(started[name], value), name
        assert not torch.equal(before[name], value), name  # the seeds alone would not give them
    parameters = [name for name, _ in target.named_parameters()]
    assert (report.kind, report.loaded, report.random, report.unused) == ("model folder", parameters, [], [])
    assert report.lines()[0] == f"model.init_from {folder} (model folder): {len(parameters)} of {len(parameters)} " \
                                f"parameters loaded"


def test_an_official_checkpoint_starts_the_model_as_its_converted_folder_does(demo_tokenizer, tmp_path):
    source = _model(0)
    official = write_official_checkpoint(source, tmp_path / "official.th")
    assert convert_main([str(official), "--model-config", "tiny", "--tokenizer", str(demo_tokenizer),
                         "--out", str(tmp_path / "converted")]) == 0
    from_official, from_folder = _model(1), _model(2)
    official_report = init_from(from_official, official)
    init_from(from_folder, tmp_path / "converted")
    assert official_report.kind == "official checkpoint" and not official_report.random
    a, b = from_official.state_dict(), from_folder.state_dict()
    for name, value in source.state_dict().items():
        assert torch.equal(a[name], value) and torch.equal(b[name], value), name
    expected = _losses(source)
    for name, value in _losses(from_official).items():
        assert torch.equal(value, expected[name]), name


def test_what_stays_random_and_what_is_unused_is_reported(tmp_path):
    source = _model(0)
    # Image-only and without a box head; one key the model has no place for.
    state = official_state_dict(source, drop=("video.", "bbox_head."))
    state["text_encoder.bert.pooler.dense.weight"] = torch.zeros(32, 32)
    torch.save({"model": state, "epoch": 3}, tmp_path / "official.th")
    target = _model(1)
    initial = {name: value.clone() for name, value in target.state_dict().items()}
    report = init_from(target, tmp_path / "official.th")
    box_head = [name for name, _ in target.named_parameters() if name.startswith("bbox_head.")]
    assert report.random == ["video.frame_pos_embed", *box_head]
    assert report.not_in_source == ["video.frame_pos_embed"]
    assert report.unused == ["text_encoder.bert.pooler.dense.weight"]
    for name in report.random:
        assert torch.equal(target.state_dict()[name], initial[name]), name
    assert torch.equal(target.state_dict()["itm_head.0.weight"], source.state_dict()["itm_head.0.weight"])
    loaded, random, unused = report.lines()
    assert random.startswith(f"{len(box_head) + 1} parameters keep their initial values: video.frame_pos_embed, "
                             f"bbox_head.0.weight")
    assert random.endswith("(1 of them not in the source architecture: video.frame_pos_embed)")
    assert unused == "1 keys of the file unused: text_encoder.bert.pooler.dense.weight"

    # A weights file in this model's names: the keys it lacks stay random, extra ones are unused.
    weights = {name: value for name, value in source.named_parameters() if not name.startswith("itm_head.")}
    save_file({**weights, "extra.weight": torch.ones(2)}, str(tmp_path / "weights.safetensors"))
    report = init_from(_model(1), tmp_path / "weights.safetensors")
    assert report.kind == "weights file" and report.unused == ["extra.weight"]
    assert report.random == [name for name, _ in source.named_parameters() if name.startswith("itm_head.")]
    written = report.write(tmp_path / "init_from.json").read_text()
    assert '"extra.weight"' in written and '"itm_head.0.weight"' in written


def test_weights_that_do_not_fit_are_refused_naming_the_key(demo_tokenizer, tmp_path):
    source = _model(0)
    state = dict(source.state_dict())
    state["vision_proj.weight"] = torch.zeros(8, 32)
    torch.save(state, tmp_path / "wrong.pt")
    target = _model(1)
    before = {name: value.clone() for name, value in target.state_dict().items()}
    with pytest.raises(InitFromError, match=r"wrong.pt: vision_proj.weight: shape \(8, 32\) in the file, \(16, 32\) "
                                            r"in the model"):
        init_from(target, tmp_path / "wrong.pt")
    assert all(torch.equal(value, before[name]) for name, value in target.state_dict().items())  # nothing copied

    official = official_state_dict(source)
    official["itm_head.0.weight"] = torch.zeros(3, 3)
    torch.save(official, tmp_path / "official.th")
    with pytest.raises(InitFromError, match=r"official.th: shapes do not fit the model: itm_head.0.weight \(3, 3\)"):
        init_from(target, tmp_path / "official.th")

    with pytest.raises(InitFromError, match="nowhere.th: does not exist"):
        init_from(target, tmp_path / "nowhere.th")
    (tmp_path / "step_00000010").mkdir()
    (tmp_path / "step_00000010" / "COMPLETE").write_text("{}")
    with pytest.raises(InitFromError, match="a training checkpoint; continue it with --resume"):
        init_from(target, tmp_path / "step_00000010")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(InitFromError, match="notes.pt: refused to load weights-only"):
        init_from(target, tmp_path / "notes.pt")
    (tmp_path / "notes.safetensors").write_text("not a checkpoint")
    with pytest.raises(InitFromError, match="notes.safetensors: not a readable weights file"):
        init_from(target, tmp_path / "notes.safetensors")


class _RunsCode:
    def __reduce__(self):
        return (print, ("a checkpoint that runs code",))


def test_a_file_that_would_run_code_is_refused(tmp_path, capsys):
    torch.save({"model": {"weight": torch.zeros(1)}, "hook": _RunsCode()}, tmp_path / "evil.th")
    with pytest.raises(InitFromError, match="evil.th: refused to load weights-only: .*GLOBAL print"):
        init_from(_model(1), tmp_path / "evil.th")
    assert "runs code" not in capsys.readouterr().out


def test_a_folder_whose_tokenizer_is_not_the_runs_is_told_apart(demo_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from training.folders.init_from import tokenizer_differs

    folder = _folder(_model(0), tmp_path / "export", demo_tokenizer)
    other = AutoTokenizer.from_pretrained(str(demo_tokenizer))
    other.add_tokens(["zebra-crossing"])
    other.save_pretrained(str(tmp_path / "other"))
    assert not tokenizer_differs(folder, demo_tokenizer)
    assert tokenizer_differs(folder, tmp_path / "other")
    assert not tokenizer_differs(tmp_path / "weights-only", tmp_path / "other")  # nothing to compare with
