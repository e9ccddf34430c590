import os
import subprocess
import sys

import pytest

import cachekit
from cachekit import RegistryError
from cachekit.registry import Registry

PLUGIN = '''
import attrs
import cachekit
from cachekit import fields


@attrs.frozen(kw_only=True)
class EveryThird(cachekit.Policy):
    type_name = "test-every-third"
    sites: cachekit.Selector = attrs.field(factory=lambda: cachekit.Selector(kinds=["attn"]),
                                           converter=fields.structured(cachekit.Selector, "sites"))
    phase: int = attrs.field(default=0, validator=fields.integer(0, 2))

    def plan_site(self, site, branch, steps, timesteps):
        out, last = {}, None
        for step in steps:
            if last is None or (step - self.phase) % 3 == 0:
                out[step], last = cachekit.Action.compute(), (step, site.name, branch)
            else:
                out[step] = cachekit.Action.reuse(last)
        return out


@cachekit.hookimpl
def cachekit_policies():
    return [EveryThird]
'''


@pytest.fixture
def third_party(tmp_path):
    """A real distribution on sys.path: a module plus dist-info with a `cachekit` entry point."""
    (tmp_path / "ck_testplugin.py").write_text(PLUGIN)
    info = tmp_path / "cachekit_testplugin-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cachekit-testplugin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[cachekit]\nck_testplugin = ck_testplugin\n")
    sys.path.insert(0, str(tmp_path))
    cachekit.reload_plugins()
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("ck_testplugin", None)
    cachekit.reload_plugins()


def test_builtins_come_through_entry_points():
    reg = cachekit.registry()
    for kind, name in [("policy", "reuse"), ("adapter", "latte"), ("preset", "naive-reuse"), ("kernel", "linear")]:
        assert name in reg.names(kind)
        assert reg.tables[kind][name].source.startswith("cachekit ")


def test_third_party_policy_is_listed_and_runs(third_party, latte, latte_reference):
    from tests.conftest import run

    reg = cachekit.registry()
    assert reg.tables["policy"]["test-every-third"].source.startswith("cachekit-testplugin 0.3")
    session = cachekit.enable(latte, {"policy": [{"type": "test-every-third", "phase": 1}]})
    out = run(latte)
    cachekit.disable(latte)
    counts = session.report().counts()
    assert counts["reuse"] > 0 and not (out == latte_reference()).all()
    listing = subprocess.run([sys.executable, "-m", "cachekit.cli", "list"], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(third_party)})
    assert any("test-every-third" in line and "cachekit-testplugin 0.3" in line for line in listing.stdout.splitlines())


def test_duplicate_names_both_sources():
    reg = Registry(load_entry_points=False)
    from cachekit.policies import reuse

    reg.add_plugin(reuse, "first-dist 1.0")
    with pytest.raises(RegistryError, match="policy 'reuse' is registered twice: by first-dist 1.0 and by second-dist 2.0"):
        reg.add("policy", "reuse", reuse.Reuse, "second-dist 2.0")


def test_register_policy_from_code():
    import attrs

    @attrs.frozen(kw_only=True)
    class Nothing(cachekit.Policy):
        type_name = "test-nothing"

        def plan_site(self, site, branch, steps, timesteps):
            return {}

    try:
        cachekit.register_policy(Nothing)
        assert cachekit.load_config("test-nothing").policies == (Nothing(),)
        with pytest.raises(RegistryError, match=r"policy 'test-nothing' is registered twice: by register_policy\(\) at .*test_registry.py"):
            cachekit.register_policy(Nothing)
    finally:
        cachekit.reload_plugins(keep_code=False)


def test_unknown_lookup_lists_known():
    with pytest.raises(RegistryError, match="unknown adapter 'hunyuan-video'; registered adapters: .*latte"):
        cachekit.registry().get("adapter", "hunyuan-video")
