"""The core's layers hold: the import-linter contract in pyproject.toml is kept."""

import pathlib

from importlinter.cli import lint_imports

ROOT = pathlib.Path(__file__).parent.parent


def test_core_layers_hold():
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0
