"""The config file and the layers: preset, then ``meshd.toml``, then flags.

``resolve`` builds a config and remembers which layer set each value (what
``meshd config show`` prints, as TOML or JSON); ``load`` is the same without the
sources. A file's keys are checked as strictly as flags: an unknown key, a flat key of
meshd ≤ 0.1, a section written as a value are each one sentence.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.config import (
    _FLAG_ONLY,
    KEYS,
    Config,
    _apply,
    _coerce,
    _flatten,
    preset,
)
from meshd.errors import ConfigError


def read_file(path: Path) -> dict[str, Any]:
    """The file's settings as ``{"section.field": raw value}``; every key checked."""
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"can't read config file {path}: {exc.strerror}") from exc
    return _flatten(raw, f" in {path}")


@dataclass(frozen=True)
class Resolved:
    """A validated config and, for every dotted key, the layer that set its value."""

    config: Config
    # "preset:lan", "file:/var/lib/meshd/meshd.toml", "flag", "env:MESHD_DATA_DIR".
    sources: Mapping[str, str]


def resolve(
    path: Path | None = None,
    preset_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_sources: Mapping[str, str] | None = None,
) -> Resolved:
    """Preset, then file, then flags (``overrides``; None values ignored), validated.

    ``override_sources`` labels overrides that did not come from a flag (an
    environment variable, say); the rest are labelled ``flag``.
    """
    file_values = read_file(path) if path is not None else {}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    chosen = flags.pop("preset", None) or preset_name
    if chosen is not None:
        name, name_source = str(chosen), "flag"
    elif "preset" in file_values:
        name, name_source = str(file_values["preset"]), f"file:{path}"
    else:
        name, name_source = "lan", "preset:lan"
    file_values.pop("preset", None)
    cfg = preset(name)
    sources = dict.fromkeys(KEYS, f"preset:{name}")
    sources["preset"] = name_source
    values: dict[str, Any] = {}
    for key, value in file_values.items():
        values[key] = _coerce(key, value)
        sources[key] = f"file:{path}"
    for key, value in flags.items():
        values[key] = _coerce(key, value)
        sources[key] = (override_sources or {}).get(key, "flag")
    new: Config = _apply(cfg, values)
    return Resolved(new.validate(), sources)


def load(
    path: Path | None = None,
    preset_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Preset, then file, then flags (``overrides``, None values ignored), validated."""
    return resolve(path, preset_name, overrides).config


def parse_assignment(text: str) -> tuple[str, Any]:
    """``--set auction.window_s=300ms``: the key and its value, typed as TOML would.

    A value that is not a TOML literal (``300ms``, ``10.0.0.1:7420``) is a string.
    """
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise ConfigError(f"--set wants KEY=VALUE (e.g. auction.window_s=300ms), got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


# -- showing a config (`meshd config show`) ---------------------------------------------


def _plain(value: Any) -> Any:
    """A value as JSON has it: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def as_json(resolved: Resolved) -> dict[str, dict[str, Any]]:
    """``{"auction.window_s": {"value": 0.25, "source": "preset:lan"}, ...}``, every key."""
    return {
        key: {"value": _plain(value), "source": resolved.sources[key]}
        for key, value in resolved.config.items()
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(_plain(value))  # JSON strings and string lists are TOML values


def as_toml(resolved: Resolved) -> str:
    """The effective config as a TOML document, grouped by section, each value's source
    in a comment on its right. Unset values and ``data_dir`` (which only a flag or the
    environment sets) are comments, so the text loads back as a config file."""
    rows: list[tuple[str, str]] = [
        ("# The effective configuration (preset, then file, then flags); each value's", ""),
        ("# source is on its right. Loadable as meshd.toml.", ""),
        ("", ""),
    ]
    section = ""
    for key, value in resolved.config.items():
        head, _, name = key.rpartition(".")
        if head != section:
            rows.append(("", ""))
            rows.append((f"[{head}]", ""))
            section = head
        source = resolved.sources[key]
        if value is None:
            rows.append((f"# {name} is not set", source))
        elif key in _FLAG_ONLY:
            rows.append((f"# {name} = {_toml_value(value)}", source))
        else:
            rows.append((f"{name} = {_toml_value(value)}", source))
    width = max(len(text) for text, source in rows if source)
    lines = [f"{text:<{width}}  # {source}" if source else text for text, source in rows]
    return "\n".join(lines) + "\n"
