"""The base of every microgpt config: strict Pydantic models, YAML files and dotted command-line overrides.

A run is described by one YAML file plus ``key=value`` overrides::

    microgpt train configs/shakespeare.yaml train.lr=3e-4 model.n_layer=8

Both go through the same Pydantic validation, so a typo or a wrong type is an error that names the field::

    model.n_heda: unknown field; did you mean n_head?

The effective config is dumped as YAML next to every artefact (:func:`dump_config`).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from microgpt.common.atomic import atomic_write_text
from microgpt.common.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound="ConfigBase")


class ConfigBase(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on assignment and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-compatible data (what :func:`dump_config` writes)."""
        return self.model_dump(mode="json")


def _did_you_mean(model: type[BaseModel] | None, key: str) -> str:
    if model is None:
        return ""
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _submodel_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """Walk ``loc`` through nested config classes; return the model that owns the last key, if known."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return current if isinstance(part, str) else None
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return current


def format_validation_error(model: type[BaseModel], error: ValidationError, prefix: str = "") -> str:
    """Turn a Pydantic error into short lines, one per problem, each naming the dotted field.

    Args:
        model: The config class that was validated (used for "did you mean" suggestions).
        error: The validation error.
        prefix: Text put before each field name (e.g. ``"model."`` when validating a sub-config).

    Returns:
        One line per problem, e.g. ``model.n_heda: unknown field; did you mean n_head?``.
    """
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        name = prefix + ".".join(str(p) for p in loc) if loc else prefix.rstrip(".") or "config"
        if item["type"] == "extra_forbidden":
            owner = _submodel_at(model, loc[:-1])
            lines.append(f"{name}: unknown field{_did_you_mean(owner, str(loc[-1]))}")
        else:
            message = item["msg"]
            if item["type"] not in {"missing", "value_error", "assertion_error"} and "input" in item:
                message += f" (got {item['input']!r})"
            lines.append(f"{name}: {message}")
    return "\n".join(lines)


def validate_config(cls: type[ConfigT], data: Any) -> ConfigT:
    """Validate plain data into ``cls``; raise :class:`ConfigError` naming each bad field.

    Raises:
        ConfigError: When a key is unknown, a value has the wrong type or a check fails.
    """
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(cls, error)) from None


def parse_value(text: str) -> Any:
    """Parse the right-hand side of an override with YAML rules (``8`` → int, ``true`` → bool, ``[1, 2]``).

    YAML 1.1 reads ``3e-4`` as a string, so a string that Python reads as a number becomes a float.
    """
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied.

    Args:
        data: The config as loaded from YAML.
        overrides: Items like ``train.lr=3e-4`` or ``model.n_layer=8``.

    Raises:
        ConfigError: When an item has no ``=`` or walks into a value that is not a mapping.
    """
    result: dict[str, Any] = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"bad override {item!r}: expected key=value, e.g. train.lr=3e-4")
        parts = key.split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"bad override {item!r}: {where} is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(raw)
    return result


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        ConfigError: When the file is missing, is not valid YAML, or is not a mapping at the top.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top, got {type(data).__name__}")
    return data


def load_config(cls: type[ConfigT], path: str | Path | None = None, overrides: list[str] | None = None) -> ConfigT:
    """Load a config of type ``cls`` from a YAML file (optional) plus dotted overrides.

    Args:
        cls: The config class.
        path: A YAML file; ``None`` starts from the class defaults.
        overrides: Dotted ``key=value`` items applied on top of the file.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: For any problem, with one line per bad field.

    >>> from microgpt.common.config import ConfigBase, load_config
    >>> class Train(ConfigBase):
    ...     lr: float = 1e-3
    >>> load_config(Train, overrides=["lr=3e-4"]).lr
    0.0003
    """
    data = load_yaml(path) if path is not None else {}
    return validate_config(cls, apply_overrides(data, overrides or []))


def dump_config(config: BaseModel, path: str | Path) -> Path:
    """Write ``config`` as YAML to ``path`` atomically and return the path."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return atomic_write_text(Path(path), text)


def flatten_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config data as one level of dotted keys (``{"train": {"lr": 1}}`` → ``{"train.lr": 1}``)."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def differing_settings(
    saved_path: Path,
    now: Mapping[str, Any],
    *,
    sections: Collection[str] | None = None,
    ignore: Collection[str] = (),
) -> list[str] | None:
    """The dotted settings in which the config saved at ``saved_path`` differs from ``now``.

    How a folder that holds another run's (or another preparation's) output is recognised and refused.

    Args:
        saved_path: The YAML a run saved beside its output.
        now: The config about to write into the same folder, as a dict.
        sections: Compare only these top-level keys (None: all).
        ignore: Dotted keys that may differ (settings that do not change the output, or that a resume may change).

    Returns:
        The sorted dotted keys that differ (empty when none), or None when there is no saved config.
    """
    if not saved_path.is_file():
        return None
    saved, current = flatten_config(load_yaml(saved_path)), flatten_config(dict(now))

    def compared(key: str) -> bool:
        return key not in ignore and (sections is None or key.split(".", 1)[0] in sections)

    return sorted(k for k in set(saved) | set(current) if compared(k) and saved.get(k) != current.get(k))
