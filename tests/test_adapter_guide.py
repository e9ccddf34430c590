"""docs/writing-an-adapter.md runs: its model and adapter, installed as a third-party plugin
distribution, register and pass check_adapter, as a class and as the page's spec."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

import cachekit
from cachekit import AdapterError

GUIDE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "writing-an-adapter.md"


def blocks() -> dict[str, str]:
    """Fenced python/toml blocks whose first line is ``# <file name>``, by file name."""
    found = {}
    for body in re.findall(r"```(?:python|toml)\n(.*?)```", GUIDE.read_text(), re.S):
        first = body.splitlines()[0]
        if first.startswith("# ") and re.fullmatch(r"# [\w.]+\.(py|toml)", first):
            found[first[2:]] = body
    return found


def module_blocks() -> dict[str, str]:
    """The page's two modules: the model (first python block) and the adapter (the one with a hook)."""
    python = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    model = next(b for b in python if "class TinyVideoDiT(" in b)
    adapter = next(b for b in python if "def cachekit_adapters" in b)
    return {"tinydit.py": model, "tinydit_adapter.py": adapter}


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The page's modules as an installed distribution with a `cachekit` entry point."""
    for name, body in {**module_blocks(), **blocks()}.items():
        (tmp_path / name).write_text(body)
    info = tmp_path / "tiny_video_dit-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-video-dit\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cachekit]\ntiny_video_dit = tinydit_adapter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cachekit.reload_plugins()
    yield tmp_path
    for name in ("tinydit", "tinydit_adapter", "check_tinydit"):
        sys.modules.pop(name, None)
    monkeypatch.undo()  # the distribution off sys.path first, or the reload registers it again
    cachekit.reload_plugins(keep_code=False)


def test_the_guide_has_its_files():
    assert {"tinydit.toml", "check_tinydit.py"} <= set(blocks())
    assert set(module_blocks()) == {"tinydit.py", "tinydit_adapter.py"}


def test_without_the_plugin_enable_points_to_the_guide(tmp_path, monkeypatch):
    (tmp_path / "tinydit.py").write_text(module_blocks()["tinydit.py"])
    monkeypatch.syspath_prepend(str(tmp_path))
    import tinydit

    try:
        with pytest.raises(AdapterError, match=r"no cachekit adapter for TinyVideoDiT; registered adapters: .*latte "
                                               r"\(LatteTransformer3DModel\).*docs/writing-an-adapter.md"):
            cachekit.enable(tinydit.tiny_pipeline(), "fastercache")
    finally:
        sys.modules.pop("tinydit", None)


def test_plugin_registers_and_passes_check_adapter_as_class_and_spec(plugin, capsys):
    entry = cachekit.registry().tables["adapter"]["tiny-video-dit"]
    assert entry.source.startswith("tiny-video-dit 0.1 (entry point 'tiny_video_dit')")
    exec(compile((plugin / "check_tinydit.py").read_text(), "check_tinydit.py", "exec"), {})
    printed = capsys.readouterr().out
    assert "adapter 'tiny-video-dit'" in printed and "FAIL" not in printed
    assert "ok    call with sigmas=: executed = plan" in printed  # the page's pipeline takes sigmas
    assert "ok    calls into 'blocks.0' follow the plan" in printed
    assert "ok    one-branch calls" in printed and "one-branch calls at 7 sites, each way round" in printed  # 6 and the stack
    listing = subprocess.run([sys.executable, "-m", "cachekit.cli", "list"], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(plugin)})
    assert any("tiny-video-dit" in line and "tiny-video-dit 0.1" in line for line in listing.stdout.splitlines())


def test_the_guide_spec_error_is_the_one_shown(plugin):
    import tinydit

    spec = (plugin / "tinydit.toml").read_text().replace('path = "attn"', 'path = "atn"')
    (plugin / "typo.toml").write_text(spec)
    shown = re.search(r"cachekit.errors.AdapterError: (adapter 'tiny-video-dit-spec'.*)", GUIDE.read_text()).group(1)
    with pytest.raises(AdapterError) as err:
        cachekit.enable(tinydit.tiny_pipeline(), "fastercache", adapter=plugin / "typo.toml")
    assert str(err.value) == shown
