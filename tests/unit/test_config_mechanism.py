"""The one configuration mechanism (data_pipeline/config.py): YAML 1.2 floats, and `build`
checking keys, types and ranges with messages that name the dotted key."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import yaml

from data_pipeline.config import ConfigError, build, parse_yaml, read_yaml_file, setting, subkey


@pytest.mark.parametrize("text, value", [
    ("5e-1", 0.5), ("7e-2", 0.07), ("1e-4", 1e-4), ("-2E+3", -2000.0), ("1.0e3", 1000.0), (".5e1", 5.0),
    ("0.5", 0.5), ("3", 3), ("true", True), ("[5e-1, 1]", [0.5, 1]), ("1e4x", "1e4x"), ("v1e4", "v1e4"),
])
def test_yaml_reads_exponents_as_floats(text, value):
    parsed = parse_yaml(text, "here")
    assert parsed == value and type(parsed) is type(value)


def test_plain_pyyaml_reads_them_as_strings():
    # Why the project has its own loader: PyYAML (YAML 1.1) needs a dot before the exponent.
    assert yaml.safe_load("a: 5e-1")["a"] == "5e-1"
    assert parse_yaml("a: 5e-1", "here")["a"] == 0.5
    # ... and the project's loader leaves PyYAML's own SafeLoader unchanged.
    assert yaml.safe_load("a: 1e-4")["a"] == "1e-4"


def test_yaml_errors_are_one_line_and_name_the_place(tmp_path):
    with pytest.raises(ConfigError) as error:
        parse_yaml("[0.9,", "optim.betas: --set value '[0.9,'")
    message = str(error.value)
    assert message.startswith("optim.betas: --set value '[0.9,': not valid YAML: ") and "\n" not in message
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\n  b: 2\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML: .*line 2"):
        read_yaml_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml_file(tmp_path / "missing.yaml")


@dataclass
class Inner:
    rate: float = setting(0.5, min=0, max=1)
    mode: str = setting("a", choices=("a", "b"))


@dataclass
class Outer:
    count: int = setting()
    scale: float = setting(1.0, gt=0)
    below_one: float = setting(0.5, lt=1)
    flag: bool = True
    limit: Optional[int] = setting(None, min=1)
    pair: list[float] = setting([0.0, 0.5], length=2, min=0, lt=1)
    names: list[str] = setting(["x"], nonempty=True)
    table: dict[str, int] = setting({}, keys=("p", "q"), min=0)
    inner: Inner = setting(Inner)
    items: list[Inner] = setting([])
    aliased: int = setting(3, key="yaml-name")

    def check(self, where: str) -> None:
        if self.limit is not None and self.limit < self.count:
            raise ConfigError(f"{subkey(where, 'limit')}: must be >= count ({self.count})")


def test_build_converts_and_fills_defaults():
    built = build(Outer, {"count": 2, "scale": 3, "limit": None, "pair": [0, 0.25], "table": {"p": 4},
                          "inner": {"rate": 1}, "items": [{}, {"mode": "b"}], "yaml-name": 9})
    assert built.count == 2 and built.scale == 3.0 and type(built.scale) is float
    assert built.pair == [0.0, 0.25] and all(type(v) is float for v in built.pair)
    assert built.inner == Inner(rate=1.0) and built.items == [Inner(), Inner(mode="b")]
    assert built.names == ["x"] and built.table == {"p": 4} and built.aliased == 9
    # Defaults are copied per instance, never shared.
    other = build(Outer, {"count": 1})
    other.names.append("y")
    assert build(Outer, {"count": 1}).names == ["x"]


@pytest.mark.parametrize("raw, message", [
    ({}, "cfg.count: missing required key"),
    ({"count": 1, "cuont": 2}, "cfg.cuont: unknown key (allowed: count, scale, below_one, flag, limit, pair, names, "
                               "table, inner, items, yaml-name)"),
    ({"count": True}, "cfg.count: expected int, got bool (True)"),
    ({"count": 1.0}, "cfg.count: expected int, got float (1.0)"),
    ({"count": 1, "scale": False}, "cfg.scale: expected float, got bool (False)"),
    ({"count": 1, "scale": "1e-4"}, "cfg.scale: expected float, got str ('1e-4')"),
    ({"count": 1, "scale": 0}, "cfg.scale: must be > 0, got 0.0"),
    ({"count": 1, "below_one": 1}, "cfg.below_one: must be < 1, got 1.0"),
    ({"count": 1, "flag": 1}, "cfg.flag: expected bool, got int (1)"),
    ({"count": 1, "limit": 0}, "cfg.limit: must be >= 1, got 0"),
    ({"count": 1, "limit": "3"}, "cfg.limit: expected int, got str ('3')"),
    ({"count": 5, "limit": 3}, "cfg.limit: must be >= count (5)"),
    ({"count": 1, "pair": [0.1]}, "cfg.pair: expected 2 items, got 1 ([0.1])"),
    ({"count": 1, "pair": [0.1, 1.0]}, "cfg.pair[1]: must be in [0, 1), got 1.0"),
    ({"count": 1, "pair": [0.1, "x"]}, "cfg.pair[1]: expected float, got str ('x')"),
    ({"count": 1, "pair": 0.5}, "cfg.pair: expected list of float, got float (0.5)"),
    ({"count": 1, "names": []}, "cfg.names: must not be empty"),
    ({"count": 1, "names": ["a", ""]}, "cfg.names[1]: must not be empty"),
    ({"count": 1, "table": {"r": 1}}, "cfg.table.r: unknown key (allowed: p, q)"),
    ({"count": 1, "table": {"q": -1}}, "cfg.table.q: must be >= 0, got -1"),
    ({"count": 1, "table": {"q": True}}, "cfg.table.q: expected int, got bool (True)"),
    ({"count": 1, "inner": {"rate": 2}}, "cfg.inner.rate: must be in [0, 1], got 2.0"),
    ({"count": 1, "inner": []}, "cfg.inner: expected a mapping, got list ([])"),
    ({"count": 1, "items": [{}, {"mode": "c"}]}, "cfg.items[1].mode: must be one of a, b, got 'c'"),
    ({"count": 1, "yaml-name": None}, "cfg.yaml-name: expected int, got null"),
])
def test_build_names_the_key(raw, message):
    with pytest.raises(ConfigError) as error:
        build(Outer, raw, "cfg")
    assert str(error.value) == message


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"^\(top level\): expected a mapping, got list"):
        build(Outer, [1])


def test_an_alias_bomb_a_self_alias_and_a_huge_or_binary_file_are_refused_at_once(tmp_path):
    # Nine levels of ten aliases: 1 KB of text standing for 10^9 values once copied.
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb = "\n".join(levels) + "\n"
    assert len(bomb) < 1024
    with pytest.raises(ConfigError, match=r"^here: more than 1,000,000 values once its YAML aliases"):
        parse_yaml(bomb, "here")
    with pytest.raises(ConfigError, match=r"^here: more than"):
        parse_yaml("a: &a [1, *a]", "here")  # a list that contains itself
    assert parse_yaml("base: &b {lr: 1.0}\nrun: *b\n", "here") == {"base": {"lr": 1.0}, "run": {"lr": 1.0}}
    big = tmp_path / "big.yaml"
    with big.open("wb") as file:
        file.truncate(17 * 2**20)  # sparse: nothing written
    with pytest.raises(ConfigError, match=r"big\.yaml: larger than 16 MiB; not a config$"):
        read_yaml_file(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not UTF-8 text \(byte 3\); not a config$"):
        read_yaml_file(binary)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"deep\.json: nested too deeply"):
        read_yaml_file(deep)
