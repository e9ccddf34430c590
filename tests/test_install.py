"""The non-editable install: a wheel holds the mapped packages, the presets and the entry points.
The wheel is built from a copy of the source tree, so the checkout is left exactly as it was."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "out")


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` (what git, the venv and caches hold left out) -> its mtime."""
    files = {}
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in (".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis")]
        for name in names:
            path = Path(directory, name)
            files[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return files


def test_wheel_installs_and_registers(tmp_path):
    before = tree(ROOT)
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w",
                            str(tmp_path), str(source)], check=True, capture_output=True, text=True)
    assert tree(ROOT) == before  # no build/, no egg-info, nothing rewritten in the checkout
    # setuptools warns of nothing (the byte-compiling notes follow PYTHONDONTWRITEBYTECODE, not the project)
    warned = [line.strip() for line in (build.stdout + build.stderr).splitlines()
              if "warning" in line.lower() and "byte-compiling is disabled" not in line]
    assert not warned, warned[:3]
    wheel = next(tmp_path.glob("cachekit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for path in ["cachekit/policies/reuse.py", "cachekit/adapters/latte.py", "cachekit/presets/naive-reuse.toml"]:
        assert path in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import cachekit, cachekit.policies.reuse as r; "
            "assert r.__file__.startswith(%r), r.__file__; "
            "reg = cachekit.registry(); assert 'reuse' in reg.names('policy') and 'naive-reuse' in reg.names('preset'); "
            "print(reg.tables['policy']['reuse'].source)") % str(target)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(target)})
    assert result.stdout.startswith("cachekit 0.1.0")
    assert tree(ROOT) == before
