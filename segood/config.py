"""YAML experiment configs: inheritance, ``--set key=value`` overrides, and strict checking.

:mod:`segood.config_schema` declares every key with its default, type and range (``configs/base.yaml``
is generated from it). An experiment file names its parent with ``inherit:``; keys merge recursively.
Any key absent from the schema is refused with the file, the dotted key and the closest valid key, so a
typo never silently trains with a default; any value that does not match its declaration is refused
with the file, the key, the value and what was expected (``train.steps: -5 in configs/x.yaml: expected
an integer >= 1``), all before any work starts. Registry members' options (``synthesis.<method>``,
``eval.score_options.<score>``, ``data.reader_options``) are checked against the members' own
declarations through the :class:`Family` list a higher layer passes in (:mod:`segood.engine.families`).
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from segood.config_schema import MEMBERS, SCHEMA, defaults
from segood.options import Opt, OptionError, check_value
from segood.resources import base_dir, resource_dir

CONFIG_DIR = resource_dir("configs")
BASE_CONFIG = CONFIG_DIR / "base.yaml"


class ConfigError(ValueError):
    """A config file or override is malformed, names a key that does not exist, or gives a value that
    does not match the key's declaration (the message names the file or ``--set``, the key, the value
    and what was expected)."""


@dataclass(frozen=True)
class Family:
    """A registry family whose members declare their options once (``dict[str, Opt]``).

    ``options``: the dotted key of the members' options; ending in ``.<member>`` when each member has
    its own section (``synthesis.<member>``, ``eval.score_options.<member>``: the schema declares that
    section with a :data:`~segood.config_schema.MEMBERS` key), else a flat mapping holding the options
    of the one member named by ``select`` (``data.reader_options`` of ``data.dataset``).
    ``select``: the dotted key whose value (a name, or a list of names) must name members.
    ``members``: returns ``{member: {option: Opt}}``, read from the registry when a config is checked.
    The families are declared in a higher layer (:mod:`segood.engine.families`), which passes them
    to :func:`load_config`: this module never imports a registry.
    """

    name: str
    options: str
    select: str | None
    members: Callable[[], Mapping[str, Mapping[str, Opt]]]

    @property
    def per_member(self) -> bool:
        return self.options.endswith("." + MEMBERS)

    @property
    def section(self) -> str:
        """The dotted key of the section holding the options (without ``.<member>``)."""
        return self.options[: -len(MEMBERS) - 1] if self.per_member else self.options


Origin = dict[str, str]  # dotted key -> the file (or '--set') that gave its value


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


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, recursively (mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """(source, document) of a config file and its ``inherit`` ancestors, the farthest first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'inherit' forms a cycle")
    doc = _read_yaml(path)
    for private in ("_source", "_set"):  # a run folder's resolved config.yaml records where it came from
        doc.pop(private, None)
    parent = doc.pop("inherit", None)
    own = [(str(path), doc)]
    return own if parent is None else _chain(path.parent / parent, seen + (path,)) + own


def _check_keys(cfg: dict, schema: dict, source: str, prefix: str = "") -> None:
    """Refuse keys the schema does not know (a member section of a ``<member>`` section is let through
    to its family) and plain values where a section is expected."""
    for k, v in cfg.items():
        dotted = f"{prefix}{k}"
        if k not in schema or k == MEMBERS:
            if MEMBERS in schema and isinstance(v, dict):
                continue
            known = [str(s) for s in schema if s != MEMBERS]
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown config key '{dotted}'{hint} (valid: {sorted(known)})")
        if isinstance(schema[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{dotted}: {v!r} in {source}: expected a mapping (a config section)")
            _check_keys(v, schema[k], source, dotted + ".")


def _record(origin: Origin, doc: dict, source: str, prefix: str = "") -> None:
    for k, v in doc.items():
        origin[f"{prefix}{k}"] = source
        if isinstance(v, dict):
            _record(origin, v, source, f"{prefix}{k}.")


def source_of(origin: Origin, dotted: str) -> str:
    """The file (or ``--set``) that gave ``dotted`` (or the closest section above it) its value."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in origin:
            return origin[".".join(parts[:n])]
    return str(BASE_CONFIG)


def _check_values(cfg: dict, schema: dict, origin: Origin, prefix: str = "") -> None:
    """Check every value against its Opt (in place: an int given for a number becomes a float)."""
    for k, node in schema.items():
        if k == MEMBERS:
            for member in set(cfg) - set(schema):
                check_or_raise(f"{prefix}{member}", cfg[member], node, origin)
        elif isinstance(node, dict):
            _check_values(cfg[k], node, origin, f"{prefix}{k}.")
        else:
            cfg[k] = check_or_raise(f"{prefix}{k}", cfg[k], node, origin)


def check_or_raise(dotted: str, value: Any, opt: Opt, origin: Origin) -> Any:
    """:func:`check_value` with the value's source; its error as a ConfigError."""
    try:
        return check_value(dotted, value, opt, source_of(origin, dotted))
    except OptionError as e:
        raise ConfigError(str(e)) from None


def get_dotted(cfg: Mapping, dotted: str) -> Any:
    """``cfg['a']['b']`` for ``'a.b'`` (None when a level is missing)."""
    node: Any = cfg
    for k in dotted.split("."):
        node = node.get(k) if isinstance(node, Mapping) else None
    return node


def check_family(cfg: dict, family: Family, origin: Origin) -> None:
    """Refuse member names the family does not have, and members' options that do not match their
    declarations (unknown option: the message lists the known ones)."""
    members = family.members()
    chosen = get_dotted(cfg, family.select) if family.select else None
    for name in ([chosen] if isinstance(chosen, str) else list(chosen or [])):
        if name not in members:
            src = source_of(origin, family.select)
            raise ConfigError(f"{family.select}: {name!r} in {src}: expected a {family.name}: one of "
                              f"{', '.join(sorted(members))}")
    section = get_dotted(cfg, family.section) or {}
    if not family.per_member:
        if isinstance(chosen, str):
            _check_member(family.section, section, members[chosen], origin)
        return
    own = set(get_dotted(SCHEMA, family.section) or {})
    for name, options in section.items():
        if name in own:
            continue
        dotted = f"{family.section}.{name}"
        if name not in members:
            close = difflib.get_close_matches(str(name), list(members), n=1)
            hint = f"; did you mean '{family.section}.{close[0]}'?" if close else ""
            raise ConfigError(f"{source_of(origin, dotted)}: unknown config key '{dotted}': not a {family.name}"
                              f"{hint} ({family.name}s: {', '.join(sorted(members))})")
        _check_member(dotted, options, members[name], origin)


def _check_member(prefix: str, given: Any, declared: Mapping[str, Opt], origin: Origin) -> None:
    if not isinstance(given, Mapping):
        raise ConfigError(f"{prefix}: {given!r} in {source_of(origin, prefix)}: expected a mapping of options")
    for key in given:
        dotted = f"{prefix}.{key}"
        if key not in declared:
            known = ", ".join(sorted(declared)) or "none"
            close = difflib.get_close_matches(str(key), list(declared), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{dotted} in {source_of(origin, dotted)}: unknown option{hint} (known: {known})")
        check_or_raise(dotted, given[key], declared[key], origin)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a', 'b'], value parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.steps=200")
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None


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


def load_config(path: str | Path, overrides: list[str] | None = None, families: Sequence[Family] = ()) -> dict:
    """Load an experiment config merged over the defaults (the schema, = ``configs/base.yaml``), then
    apply overrides, and check every key and value before returning: unknown keys, and values that do
    not match their declaration, are a ConfigError naming the file (or ``--set``), the key, the value
    and what was expected. ``families``: registry families whose members' options are checked too
    (commands pass :data:`segood.engine.families.FAMILIES`; without them member sections are only
    checked to be mappings, and each builder checks its own when it runs).

    A relative ``configs/NAME.yaml`` (or bare ``NAME.yaml``) that does not exist here is taken
    from segood's own configs, so the README's commands work from any directory. The overrides are
    kept in ``cfg['_set']`` (when there are any) beside ``cfg['_source']``."""
    path = find_config(path)
    layers = _chain(path)
    if overrides:
        layers.append(("--set", apply_overrides({}, overrides)))
    cfg, origin = defaults(), {}
    for source, doc in layers:
        _check_keys(doc, SCHEMA, source)
        cfg = merge(cfg, doc)
        _record(origin, doc, source)
    _check_values(cfg, SCHEMA, origin)
    for family in families:
        check_family(cfg, family, origin)
    cfg["_source"] = str(path)
    if overrides:
        cfg["_set"] = list(overrides)
    return cfg


def inherit_chain(path: str | Path) -> list[str]:
    """The file names of a config and its ``inherit`` ancestors, the config itself first (for reports:
    ``synthetic_fm_energy.yaml < synthetic_feature_mixing.yaml < ... < base.yaml``)."""
    return [Path(source).name for source, _ in reversed(_chain(find_config(path)))]


def given_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """What a config file, its ancestors except ``base.yaml`` and the overrides set explicitly (the
    keys a user stated, as opposed to defaults): compared with a checkpoint's model section."""
    base = BASE_CONFIG.resolve()
    out: dict = {}
    for source, doc in _chain(find_config(path)):
        if Path(source) != base:
            out = merge(out, doc)
    return merge(out, apply_overrides({}, overrides or []))


def add_overrides(parser, example: str = "train.steps=200") -> None:
    """``--set KEY=VALUE`` (repeatable) on an argparse parser or group: overrides in the syntax
    :func:`load_config` applies. The one definition of ``--set`` for every entry point."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. --set {example} (repeatable)")


def base_defaults() -> dict:
    """Every key with its default (:mod:`segood.config_schema`, the one place defaults live;
    ``configs/base.yaml`` is generated from it)."""
    return defaults()


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
