"""The core's layers hold: the import-linter contracts in pyproject.toml are kept, and the core
never imports the plugins it ships."""

import ast
import pathlib

from importlinter.cli import lint_imports

ROOT = pathlib.Path(__file__).parent.parent
PLUGINS = ("cachekit.policies", "cachekit.adapters")


def test_core_layers_and_plugin_contracts_hold():
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def imported(source: str, package: str) -> set[str]:
    """The absolute names of the modules (and module attributes) ``source``, a module of ``package``, imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_core_never_imports_the_plugins():
    # import-linter cannot see this direction: the plugins are built into the package from their own folders
    offending = {}
    for path in (ROOT / "cachekit").rglob("*.py"):
        package = ".".join(("cachekit", *path.parent.relative_to(ROOT / "cachekit").parts))
        names = sorted(n for n in imported(path.read_text(), package) if n.startswith(PLUGINS))
        if names:
            offending[str(path.relative_to(ROOT))] = names
    assert offending == {}


def test_the_core_check_sees_plugin_imports_of_every_form():
    source = "from ..adapters import wan\nimport cachekit.policies.reuse\nfrom cachekit import policies\n"
    assert {"cachekit.adapters.wan", "cachekit.policies.reuse", "cachekit.policies"} <= imported(source, "cachekit.tuning")
    assert not any(n.startswith(PLUGINS) for n in imported("from .. import fields\nfrom . import search\n", "cachekit.tuning"))
