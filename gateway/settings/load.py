"""Reading the configuration: a TOML file, or the embedded defaults, validated by pydantic."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from gateway.settings.sections import Config


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data)


def config_from_dict(data: dict[str, object]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from None
