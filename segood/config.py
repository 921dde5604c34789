"""YAML experiment configs: inheritance, ``--set key=value`` overrides, and strict key checking.

``configs/base.yaml`` lists every key with its default. An experiment file names its parent with
``inherit:``; keys merge recursively. Any key absent from the base is refused with the file, the
dotted key and the closest valid key, so a typo never silently trains with a default.
"""
from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path
from typing import Any

import yaml

from segood.resources import base_dir, resource_dir

CONFIG_DIR = resource_dir("configs")
BASE_CONFIG = CONFIG_DIR / "base.yaml"


class ConfigError(ValueError):
    """A config file or override is malformed or names a key that does not exist."""


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'inherit' forms a cycle")
    doc = _read_yaml(path)
    parent = doc.pop("inherit", None)
    if parent is None:
        return doc
    return _merge(_load_chain(path.parent / parent, seen + (path,)), doc)


def _check_keys(cfg: dict, schema: dict, source: str, prefix: str = "") -> None:
    for k, v in cfg.items():
        dotted = f"{prefix}{k}"
        if k not in schema:
            close = difflib.get_close_matches(str(k), [str(s) for s in schema], n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown config key '{dotted}'{hint} (valid: {sorted(schema)})")
        if isinstance(schema[k], dict) and schema[k]:
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a mapping, got {v!r}")
            _check_keys(v, schema[k], source, dotted + ".")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a', 'b'], value parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.steps=200")
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(cfg)
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{k}' is not a mapping")
        node[keys[-1]] = value
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Load an experiment config merged over ``configs/base.yaml``, then apply overrides.
    A relative ``configs/NAME.yaml`` (or bare ``NAME.yaml``) that does not exist here is taken
    from segood's own configs, so the README's commands work from any directory."""
    path = find_config(path)
    base = _read_yaml(BASE_CONFIG)
    doc = _load_chain(path)
    doc.pop("_source", None)  # a run folder's resolved config.yaml records where it came from
    _check_keys(doc, base, str(path))
    cfg = _merge(base, doc)
    if overrides:
        over = apply_overrides({}, overrides)
        _check_keys(over, base, "--set")
        cfg = _merge(cfg, over)
    cfg["_source"] = str(path)
    return cfg


def add_overrides(parser, example: str = "train.steps=200") -> None:
    """``--set KEY=VALUE`` (repeatable) on an argparse parser or group: overrides in the syntax
    :func:`load_config` applies. The one definition of ``--set`` for every entry point."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. --set {example} (repeatable)")


def base_defaults() -> dict:
    """A copy of ``configs/base.yaml``: every key with its default (the one place defaults live)."""
    return copy.deepcopy(_base_cached())


@functools.lru_cache(maxsize=1)
def _base_cached() -> dict:
    return _read_yaml(BASE_CONFIG)


def find_config(path: str | Path) -> Path:
    """``path`` itself if it exists, else segood's shipped config of that name (if any)."""
    path = Path(path)
    if path.exists() or path.is_absolute() or path.parent not in (Path("."), Path("configs")):
        return path
    shipped = CONFIG_DIR / path.name
    return shipped if shipped.is_file() else path


def resolve_path(p: str | Path) -> Path:
    """Relative data paths in configs are relative to the repository root (in a checkout) or to
    the current directory (installed package)."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else (base_dir() / p)
