"""A plugin cannot take cachekit down: a name registered again is skipped with a warning naming both
sources, and a policy whose code fails is named, with its distribution, in a clear error."""

import sys

import pytest
import torch

import cachekit
from cachekit import PlanError
from cachekit.errors import PluginWarning

from .conftest import run

torch.set_num_threads(1)

PLUGIN = '''
import attrs
import cachekit


class _Base(cachekit.Policy):
    def plan_site(self, site, branch, steps, run):
        return self.answer(steps)


@attrs.frozen(kw_only=True)
class ReturnsNone(_Base):
    type_name = "test-returns-none"

    def answer(self, steps):
        return None


@attrs.frozen(kw_only=True)
class ReturnsStrings(_Base):
    type_name = "test-returns-strings"

    def answer(self, steps):
        return {step: "reuse" for step in steps}


@attrs.frozen(kw_only=True)
class Raises(_Base):
    type_name = "test-raises"

    def answer(self, steps):
        raise ZeroDivisionError("the plugin's own bug")


@attrs.frozen(kw_only=True)
class Reuse(_Base):
    type_name = "reuse"  # a built-in's name

    def answer(self, steps):
        raise AssertionError("the built-in reuse must stand")


@cachekit.hookimpl
def cachekit_policies():
    return [ReturnsNone, ReturnsStrings, Raises, Reuse]
'''


@pytest.fixture
def bad_plugin(tmp_path):
    """A distribution on sys.path whose policies misbehave, one of them under a built-in's name."""
    (tmp_path / "ck_badplugin.py").write_text(PLUGIN)
    info = tmp_path / "cachekit_badplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cachekit-badplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cachekit]\nck_badplugin = ck_badplugin\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.warns(PluginWarning) as caught:
            cachekit.reload_plugins()
        yield [str(w.message) for w in caught]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("ck_badplugin", None)
        cachekit.reload_plugins()


def test_a_plugin_registering_a_builtin_name_is_skipped_and_the_builtin_stands(bad_plugin, latte, latte_reference):
    assert any("skipped policy 'reuse' of cachekit-badplugin 0.1 (entry point 'ck_badplugin')" in m
               and "already registered by cachekit 0.1.0 (entry point 'reuse')" in m for m in bad_plugin)
    assert cachekit.registry().tables["policy"]["reuse"].source.startswith("cachekit 0.1.0")
    assert "test-raises" in cachekit.registry().names("policy")  # the plugin's other names load
    session = cachekit.enable(latte, "reuse")
    run(latte)
    assert session.report().counts()["reuse"] > 0


@pytest.mark.parametrize("kind, error", [("test-returns-none", "TypeError"),
                                         ("test-returns-strings", "NotAnAttrsClassError"),
                                         ("test-raises", "ZeroDivisionError: the plugin's own bug")])
def test_a_failing_policy_is_named_with_its_distribution(bad_plugin, latte, latte_reference, kind, error):
    cachekit.enable(latte, {"policy": [{"type": kind, "label": "mine", "sites": {"kinds": ["attn"]}}]})
    expected = (rf"policy 'mine' \(type '{kind}', from cachekit-badplugin 0.1 \(entry point 'ck_badplugin'\)\) "
                rf"failed while planning \S+: {error}")
    with pytest.raises(PlanError, match=expected):
        run(latte)
    with pytest.raises(PlanError, match=expected):  # again at the next call: nothing was left half-done
        run(latte)
    cachekit.disable(latte)
    assert torch.equal(run(latte), latte_reference())  # the model is intact
