"""Presets shipped with cachekit: one config file per preset."""

from __future__ import annotations

import pathlib

from cachekit.registry import hookimpl

HERE = pathlib.Path(__file__).parent


@hookimpl
def cachekit_presets() -> dict[str, pathlib.Path]:
    return {path.stem.replace("--", "/"): path for path in sorted(HERE.glob("*.toml"))}
