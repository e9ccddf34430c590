"""The non-editable install: a wheel holds the mapped packages, the presets and the entry points."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_registers(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
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
