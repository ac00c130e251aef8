"""Typed dataclass configs <-> command line, TOML files and stable hashes.

One mechanism for every command (STYLE rule 3): a config is a dataclass whose fields
carry ``metadata={"help": ...}``; validation lives in ``__post_init__`` and raises
:class:`~vptr.errors.ConfigError`. Values come from, in increasing priority, the
dataclass defaults, an optional TOML file (``--config file.toml``) and the command line.
Nested dataclass fields are addressed with dots: ``--encoder.name impala``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from vptr.errors import ConfigError

C = TypeVar("C")


def helpfield(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and a help string (shown by ``--help``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, then exits with 2."""

    def error(self, message: str) -> typing.NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parse_scalar(tp: Any, text: str) -> Any:
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if get_origin(tp) is Literal:
        choices = get_args(tp)
        for c in choices:
            if str(c) == text:
                return c
        raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {text!r}")
    if tp is Path:
        return Path(text)
    return tp(text)


def _converter(tp: Any, optional: bool):
    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            return _parse_scalar(tp, text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(tp, "__name__", "value")
    return convert


def _show(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "(none)"
    return "(none)" if value is None or value == "" else str(value)


def add_config_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                    description: str | None = None) -> None:
    """Add one ``--name`` option per field of dataclass ``cls`` (recursively); the options
    of a nested dataclass field form a group titled by its name, described by its help."""
    hints = typing.get_type_hints(cls)
    group = (parser.add_argument_group(prefix.rstrip("."), description) if prefix
             else parser)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        name = prefix + f.name
        if tp is dict or get_origin(tp) is dict:  # a TOML table: --config FILE only
            continue
        if dataclasses.is_dataclass(tp):
            add_config_args(parser, tp, prefix=name + ".",
                            description=f.metadata.get("help") or None)
            continue
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        shown = f" [default: {_show(default)}]"
        flag = "--" + name.replace("_", "-")
        kw: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=help_text + shown)
        if tp is bool:
            if f.name.startswith("no_"):  # argparse reads "--no-x" as the negation: x = False
                raise TypeError(f"{cls.__name__}.{f.name}: a boolean option may not start with "
                                "no_ (--no-... would set it False); name it positively")
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if get_origin(tp) is tuple:
            inner = get_args(tp)[0]
            group.add_argument(flag, nargs="*", type=_converter(inner, False), metavar="X", **kw)
            continue
        if get_origin(tp) is Literal:
            kw["metavar"] = "{" + ",".join(map(str, get_args(tp))) + "}"
        group.add_argument(flag, type=_converter(tp, optional), **kw)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return build_config(tp, value, where=where)
    if get_origin(tp) is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        inner = get_args(tp)[0]
        return tuple(_coerce(inner, v, where) for v in value)
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, get_args(tp)))}, "
                              f"got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path (string), got {value!r}")
    if tp in (int, float) and isinstance(value, bool):  # bool is an int subclass
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        if isinstance(value, str):
            try:
                return _parse_scalar(tp, value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def build_config(cls: type[C], values: dict[str, Any] | None = None, where: str = "") -> C:
    """Build dataclass ``cls`` from a (possibly nested, possibly dotted) dict.

    Unknown keys are rejected with the key named; ``__post_init__`` validation errors
    propagate as :class:`ConfigError`.
    """
    nested: dict[str, Any] = {}
    for key, value in (values or {}).items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif isinstance(value, dict) and isinstance(nested.get(head), dict):
            nested[head].update(value)
        else:
            nested[head] = value
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(nested) - names)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown option(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in nested.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None


def config_from_namespace(cls: type[C], ns: argparse.Namespace,
                          config_file: str | Path | None = None) -> C:
    """Defaults <- TOML file <- command-line values that were given explicitly."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_toml(config_file))
        where = str(config_file)
    else:
        where = ""
    cli = {k: v for k, v in vars(ns).items() if "." in k or k in _field_names(cls)}
    flat_file = flatten(values)
    flat_file.update(cli)
    return build_config(cls, flat_file, where=where)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables -> dotted keys (``{"icvf": {"lr": 1}}`` -> ``{"icvf.lr": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-friendly dict of a (nested) dataclass config."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def config_hash(cfg: Any, length: int = 10, exclude: tuple[str, ...] = (),
                omit_when: dict[str, Any] | None = None) -> str:
    """Stable short hash of a config or dict (keys sorted), used to key cached outputs.

    ``exclude``: dotted keys left out. ``omit_when``: dotted key -> value; the key is left
    out while it has that value (an option added after outputs were keyed by it, at its
    "off" value, keeps their keys)."""
    d = dict(to_dict(cfg))
    drops = [(k, None) for k in exclude] + [(k, (off,)) for k, off in (omit_when or {}).items()]
    for key, only in drops:  # dotted keys reach into nested configs
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and (only is None or node[leaf] == only[0]):
            node.pop(leaf)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
