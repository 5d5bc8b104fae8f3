"""YAML + dotted-override loading into typed dataclass configs.

The pipeline for ``load_config("run.yaml", ["train.lr=2e-5"])``:

1. read the YAML file; follow ``extends:`` (a path or a list of paths, relative to the file, or the
   name of a shipped config in ``train_configs/``) depth-first, later bases and the file itself
   overriding earlier ones (mappings merge key by key, everything else is replaced);
2. apply the dotted overrides (values parsed as YAML: ``a.b=[1,2]``, ``a.c=null``);
3. interpolate ``${VAR}`` / ``${VAR:-default}`` from the environment in every string, and expand a
   leading ``~/`` (before or after interpolation) to the home directory;
4. build the dataclass tree: unknown keys are rejected naming the key, the file that set it and the
   closest valid key; values are coerced to the field's type (``"2e-5"`` -> float) or rejected;
5. run ``validate()`` on every section (per-field and cross-field checks).

Every key remembers where it came from (file or command line), so errors point at the right place.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from emollm.errors import CONFIG_SHOW_HINT, ConfigError

C = TypeVar("C")

EXTENDS_KEY = "extends"
CLI_SOURCE = "command line"
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_MAX_EXTENDS_DEPTH = 16


# ----------------------------------------------------------------------------------- raw loading
class _Sourced:
    """A raw config tree plus, for every dotted key, the source (file / command line) that set it."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def merge(self, data: Mapping[str, Any], source: str, prefix: str = "", into: dict | None = None) -> None:
        target = self.data if into is None else into
        for key, value in data.items():
            key = str(key)
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and isinstance(target.get(key), dict):
                self.sources.setdefault(dotted, source)
                self.merge(value, source, dotted + ".", target[key])
            else:
                # A replaced subtree forgets where its old children came from.
                for stale in [k for k in self.sources if k.startswith(dotted + ".")]:
                    del self.sources[stale]
                target[key] = _plain(value)
                self.sources[dotted] = source
                if isinstance(value, Mapping):
                    self._mark(value, source, dotted + ".")

    def _mark(self, data: Mapping[str, Any], source: str, prefix: str) -> None:
        for key, value in data.items():
            self.sources[f"{prefix}{key}"] = source
            if isinstance(value, Mapping):
                self._mark(value, source, f"{prefix}{key}.")

    def source_of(self, dotted: str) -> str:
        while dotted:
            if dotted in self.sources:
                return self.sources[dotted]
            dotted = dotted.rpartition(".")[0]
        return "defaults"


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only, no Python tags) that refuses a key written twice in one
    mapping: plain PyYAML keeps the last value silently, so ``lr: 1e-4`` ... ``lr: 2e-5`` would train
    with a value the author may not have meant. Keys a ``<<`` merge brings in may be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key}' (first set at line {first.start_mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """`` (line L, column C): invalid YAML: <problem>`` on one line, to follow a file's name."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where}: invalid YAML: {problem}"


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (:class:`UniqueKeyLoader`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", hint="check the path passed to --config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = safe_load_unique(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}{yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top, found {type(data).__name__}")
    return data


def resolve_config_path(ref: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """A config reference: a path (relative to ``relative_to`` first), or a shipped config's name."""
    from emollm.resources import train_configs_dir

    ref_path = Path(os.path.expandvars(os.fspath(ref))).expanduser()
    candidates = []
    if ref_path.is_absolute():
        candidates.append(ref_path)
    else:
        if relative_to is not None:
            candidates.append(relative_to / ref_path)
        candidates.append(Path.cwd() / ref_path)
        shipped = train_configs_dir()
        candidates.append(shipped / ref_path)
        if ref_path.suffix not in (".yaml", ".yml"):
            candidates.append(shipped / f"{ref_path}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"config '{ref}' not found (looked at: {tried})")


def _load_file(path: Path, into: _Sourced, chain: tuple[Path, ...]) -> None:
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config files extend each other in a cycle: {cycle}")
    if len(chain) >= _MAX_EXTENDS_DEPTH:
        raise ConfigError(f"{path}: 'extends' nests deeper than {_MAX_EXTENDS_DEPTH} files")
    data = _read_yaml(path)
    bases = data.pop(EXTENDS_KEY, None)
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"{path}: 'extends' must be a file path or a list of file paths")
        for base in bases:
            _load_file(resolve_config_path(base, path.parent), into, (*chain, path))
    into.merge(data, str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=2e-5"`` -> ``("train.lr", "2e-5")``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*", key):
        raise ConfigError(
            f"bad override '{text}': expected dotted.key=value",
            hint="for example: train.lr=2e-5 model.backbone.name_or_path=/ckpt",
        )
    try:
        value = safe_load_unique(raw) if raw.strip() else ""
    except yaml.constructor.ConstructorError as exc:  # a duplicate key in an inline mapping
        raise ConfigError(f"bad override '{text}': {exc.problem}") from None
    except yaml.YAMLError:
        value = raw
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _interpolate(node: Any, sourced: _Sourced, dotted: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, sourced, f"{dotted}.{k}" if dotted else k) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, sourced, f"{dotted}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    if node.startswith("~/") or node == "~":  # a home path: expanded so every library can open it
        node = os.path.expanduser(node)
    if "${" not in node:
        return node

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(
                    f"'{dotted}' (from {sourced.source_of(dotted.split('[')[0])}) uses ${{{name}}}, "
                    "but that environment variable is not set",
                    hint=f"export {name}=... or write ${{{name}:-default}}",
                )
            return default
        return value

    value = _ENV_PATTERN.sub(replace, node)
    return os.path.expanduser(value) if value.startswith("~/") else value


def load_raw(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> _Sourced:
    """Steps 1-3 of the pipeline: merged, overridden, interpolated raw tree with sources."""
    sourced = _Sourced()
    if path is not None:
        _load_file(resolve_config_path(path), sourced, ())
    for text in overrides:
        key, value = parse_override(text)
        sourced.merge(_nest(key, value), CLI_SOURCE)
    sourced.data = _interpolate(sourced.data, sourced)
    return sourced


# -------------------------------------------------------------------------- dataclass building
def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def all_dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every valid dotted key of a config class (for suggestions and ``config keys``)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for name in field_names(cls):
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        inner = _strip_optional(hints[name])
        if dataclasses.is_dataclass(inner):
            keys.extend(all_dotted_keys(inner, dotted + "."))
    return keys


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _fail(sourced: _Sourced, dotted: str, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"'{dotted}' (from {sourced.source_of(dotted.split('[')[0])}): {message}",
                       hint=hint or CONFIG_SHOW_HINT)


def _coerce(value: Any, tp: Any, dotted: str, sourced: _Sourced, root: type | None = None) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _fail(sourced, dotted, f"must not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, dotted, sourced, root)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise _fail(sourced, dotted, f"expected {_type_name(tp)}, got {value!r}")
    if value is None:
        raise _fail(sourced, dotted, f"must not be null (expected {_type_name(tp)})")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"did you mean '{close[0]}'?" if close else None
        raise _fail(sourced, dotted, f"{value!r} is not one of {list(choices)}", hint)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _fail(sourced, dotted, f"expected a mapping of {tp.__name__} keys, got {value!r}")
        return build_dataclass(tp, value, sourced, dotted + ".", root)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise _fail(sourced, dotted, f"expected a list, got {value!r}")
        items = [_coerce(v, item_tp, f"{dotted}[{i}]", sourced, root) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        key_tp, val_tp = typing.get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise _fail(sourced, dotted, f"expected a mapping, got {value!r}")
        return {
            _coerce(k, key_tp, f"{dotted}.{k}", sourced, root): _coerce(v, val_tp, f"{dotted}.{k}", sourced, root)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        raise _fail(sourced, dotted, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _fail(sourced, dotted, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # PyYAML reads "2e-5" as a string (YAML 1.1 wants "2.0e-5"); accept it.
                return float(value.strip())
            except ValueError:
                pass
        raise _fail(sourced, dotted, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise _fail(sourced, dotted, f"expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _fail(sourced, dotted, f"expected {_type_name(tp)}, got {value!r}")


def _suggest(key: str, prefix: str, local: list[str], root: type) -> str | None:
    """The closest valid key: the same name in another section, else a near spelling."""
    everywhere = all_dotted_keys(root)
    same_leaf = [k for k in everywhere if k.rpartition(".")[2] == key]
    if same_leaf:
        return same_leaf[0]
    close = difflib.get_close_matches(key, local, n=1, cutoff=0.6)
    if close:
        return f"{prefix}{close[0]}"
    leaves = {k.rpartition(".")[2]: k for k in everywhere}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.75)
    return leaves[close[0]] if close else None


def build_dataclass(
    cls: type[C], data: Mapping[str, Any], sourced: _Sourced | None = None, prefix: str = "", root: type | None = None
) -> C:
    """Build ``cls`` from a raw mapping, rejecting unknown keys and coercing types."""
    sourced = sourced or _Sourced()
    root = root or cls
    hints = typing.get_type_hints(cls)
    valid = field_names(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in valid:
            close = _suggest(key, prefix, valid, root)
            hint = f"did you mean '{close}'?" if close else f"valid keys here: {', '.join(valid)}"
            raise ConfigError(f"unknown config key '{dotted}' (from {sourced.source_of(dotted)})", hint=hint)
        kwargs[key] = _coerce(value, hints[key], dotted, sourced, root)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field without default
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}", hint=CONFIG_SHOW_HINT) from None
    return obj


def validate_tree(obj: Any, sourced: _Sourced | None = None, prefix: str = "") -> None:
    """Call ``validate()`` on every dataclass in the tree, children first; name the failing key."""
    sourced = sourced or _Sourced()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate_tree(value, sourced, f"{prefix}{f.name}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    validate_tree(v, sourced, f"{prefix}{f.name}.{k}.")
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigCheck as exc:
            dotted = f"{prefix}{exc.key}"
            raise ConfigError(f"'{dotted}' (from {sourced.source_of(dotted)}): {exc.message}",
                              hint=exc.hint or CONFIG_SHOW_HINT) from None


class ConfigCheck(Exception):
    """Raised by a section's ``validate()``: ``key`` is relative to that section."""

    def __init__(self, key: str, message: str, hint: str | None = None):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.hint = hint


def load_config(
    cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()
) -> C:
    """Load, merge, override, interpolate, build and validate a config of type ``cls``."""
    sourced = load_raw(path, overrides)
    obj = build_dataclass(cls, sourced.data, sourced)
    validate_tree(obj, sourced)
    return obj


# ------------------------------------------------------------------------------------ dumping
def to_dict(obj: Any) -> Any:
    """A plain (YAML-safe) dict of a config tree."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False, allow_unicode=True)
