"""YAML configs checked against a schema of defaults, with ``_base_`` inheritance and dotted ``key=value`` overrides.

The defaults dict *is* the schema: every valid key appears there, and its default's type is the expected type
(None accepts anything; an int default accepts only ints, a float default accepts ints and floats).
"""
import copy
import difflib
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import yaml


# YAML 1.1 (PyYAML) reads exponent floats without a dot ("1e-4") as strings; a float key accepts them as numbers.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key (and file) and what was expected."""


class Config(dict):
    """A nested dict with attribute access (``cfg.solver.lr``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


class _InlineListDumper(yaml.SafeDumper):
    """Mappings in blocks, lists on one line (``anchor_sizes: [64, 128, 256, 512]``)."""


_InlineListDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True))


def resolved_config_text(cfg: Config, tool: str, path: Optional[Path]) -> str:
    """``--print-config`` output: the resolved config as YAML (lists inline), headed by a comment naming the file."""
    source = "(no file)"
    if path is not None:
        source = str(path)
        try:
            source = str(Path(path).resolve().relative_to(Path.cwd()))
        except ValueError:  # outside the working directory: keep the path as given
            pass
    header = f"# {tool}: defaults <- {source} <- flags <- key=value overrides\n"
    return header + yaml.dump(cfg.to_dict(), Dumper=_InlineListDumper, sort_keys=False, width=120)


def _wrap(d: dict) -> Config:
    return Config({k: _wrap(v) if isinstance(v, dict) else v for k, v in d.items()})


def _flat_keys(d: dict, prefix: str = "") -> List[str]:
    keys = []
    for k, v in d.items():
        keys.append(prefix + k)
        if isinstance(v, dict) and v:
            keys += _flat_keys(v, prefix + k + ".")
    return keys


def _unknown(key: str, schema: dict, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, _flat_keys(schema), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{where}{hint}")


def _check_type(key: str, default: Any, value: Any, where: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"config key '{key}'{where} expects {type(default).__name__} (default {default!r}), "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def _merge(base: dict, update: dict, schema: dict, root: dict, prefix: str, where: str) -> None:
    for k, v in update.items():
        key = prefix + str(k)
        if k not in schema:
            raise _unknown(key, root, where)
        if isinstance(schema[k], dict) and schema[k] and isinstance(v, dict):
            _merge(base[k], v, schema[k], root, key + ".", where)
        else:
            base[k] = _check_type(key, schema[k], v, where)


def _read_yaml(path: Path, seen: Iterable[Path] = ()) -> List[dict]:
    """The chain of YAML dicts from the root ``_base_`` down to ``path``."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} inherits from itself through _base_")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{line} is not valid YAML: {getattr(e, 'problem', e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    base = data.pop("_base_", None)
    chain = _read_yaml(path.parent / base, [*seen, path]) if base else []
    return chain + [(path, data)]


def recipe_path(config_dir: Path, dataset: str, name: str = "") -> Optional[Path]:
    """``<config_dir>/<dataset>_<name>.yaml`` if it exists, else ``<dataset>_base.yaml``, else None."""
    for file in ([f"{dataset}_{name}.yaml"] if name else []) + [f"{dataset}_base.yaml"]:
        if (config_dir / file).is_file():
            return config_dir / file
    return None


def parse_override(text: str):
    """``a.b=value`` → (``a.b``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. solver.lr=0.01)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return key.strip(), value


def override_value(overrides: Iterable[str], key: str, default: Any = None) -> Any:
    """The value the last ``key=value`` in ``overrides`` gives ``key`` (``default`` if none does); tools use it to
    pick a config file before loading, e.g. from ``data.dataset``."""
    value = default
    for text in overrides:
        name, parsed = parse_override(text)
        if name == key:
            value = parsed
    return value


def load_config(defaults: Dict[str, Any], path: Optional[str] = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults ← YAML file chain (``_base_``) ← ``key=value`` overrides, each key and type checked."""
    cfg = copy.deepcopy(defaults)
    if path:
        for file, data in _read_yaml(Path(path)):
            _merge(cfg, data, defaults, defaults, "", f" in {file}")
    for text in overrides:
        key, value = parse_override(text)
        node, schema, parts = cfg, defaults, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(schema, dict) or part not in schema:
                raise _unknown(key, defaults, " (command-line override)")
            if i < len(parts) - 1:
                node, schema = node[part], schema[part]
        node[parts[-1]] = _check_type(key, schema[parts[-1]], value, " (command-line override)")
    return _wrap(cfg)


def config_from_dict(defaults: Dict[str, Any], data: Dict[str, Any], where: str) -> Config:
    """Defaults ← ``data`` (a mapping read from somewhere else, e.g. one entry of a list); ``where`` names it."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    cfg = copy.deepcopy(defaults)
    _merge(cfg, data, defaults, defaults, "", f" in {where}")
    return _wrap(cfg)
