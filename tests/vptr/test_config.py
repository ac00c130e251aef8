"""The dataclass <-> CLI / TOML mechanism every command uses."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from vptr.config import (
    ArgumentParser,
    add_config_args,
    build_config,
    config_from_namespace,
    config_hash,
    helpfield,
)
from vptr.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    name: str = helpfield("impala", "encoder")
    width: int = helpfield(32, "width")


@dataclass(frozen=True)
class Outer:
    lr: float = helpfield(1e-3, "learning rate")
    steps: int = helpfield(10, "steps")
    mode: Literal["a", "b"] = helpfield("a", "mode")
    tags: tuple[str, ...] = helpfield(("x",), "tags")
    flag: bool = helpfield(False, "a flag")
    out: Path | None = helpfield(None, "output dir")
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if self.steps <= 0:
            raise ConfigError(f"steps must be > 0, got {self.steps}")


def parse(argv, config_file=None):
    p = ArgumentParser(prog="t")
    add_config_args(p, Outer)
    return config_from_namespace(Outer, p.parse_args(argv), config_file)


def test_defaults_and_overrides():
    cfg = parse([])
    assert cfg == Outer()
    cfg = parse(["--lr", "0.5", "--mode", "b", "--tags", "p", "q", "--flag",
                 "--inner.width", "7", "--out", "o"])
    assert (cfg.lr, cfg.mode, cfg.tags, cfg.flag, cfg.inner.width, cfg.out) == (
        0.5, "b", ("p", "q"), True, 7, Path("o"))
    assert cfg.inner.name == "impala"


def test_toml_then_cli_priority(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('lr = 2\nsteps = 3\n[inner]\nname = "timm:resnet18"\n')
    cfg = parse(["--steps", "4"], f)
    assert (cfg.lr, cfg.steps, cfg.inner.name) == (2.0, 4, "timm:resnet18")


def test_bad_values_are_rejected_with_the_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--steps", "many"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps" in err[0]
    with pytest.raises(ConfigError, match="steps must be > 0, got 0"):
        parse(["--steps", "0"])
    with pytest.raises(SystemExit):
        parse(["--mode", "c"])
    f = tmp_path / "bad.toml"
    f.write_text("lr = 1\ntypo = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*unknown option\(s\) typo"):
        parse([], f)
    with pytest.raises(ConfigError, match="not found"):
        parse([], tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="expected int"):
        build_config(Outer, {"steps": "x"})
    with pytest.raises(ConfigError, match="expected int, got True"):
        build_config(Outer, {"steps": True})
    with pytest.raises(ConfigError, match="expected a path"):
        build_config(Outer, {"out": 5})
    with pytest.raises(ConfigError, match="cannot read"):
        parse([], tmp_path)  # a directory
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"lr = 1 # \xe9\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse([], bad)


def test_hash_excludes_dotted_keys():
    a, b = Outer(inner=Inner(width=1)), Outer(inner=Inner(width=2))
    assert config_hash(a) != config_hash(b)
    assert config_hash(a, exclude=("inner.width",)) == config_hash(b, exclude=("inner.width",))


def test_hash_is_stable_and_sensitive():
    assert config_hash(Outer()) == config_hash(Outer())
    assert config_hash(Outer()) != config_hash(Outer(lr=0.1))
    assert config_hash(Outer(out=Path("a")), exclude=("out",)) == config_hash(
        Outer(out=Path("b")), exclude=("out",))
