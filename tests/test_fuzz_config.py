"""Fuzzing the config loader: whatever a user writes, ``load_config`` returns a config that dumps and
loads back equal, or raises a CachekitError whose message is one line of bounded length."""

import json
import math
import os

import attrs
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cachekit
from cachekit import CachekitError, dump_config, load_config

MAX_MESSAGE = 1000  # registry listings included; echoed values are far shorter
# More examples for a longer hunt: CACHEKIT_FUZZ_EXAMPLES=3000 pytest tests/test_fuzz_config.py
FUZZ = settings(max_examples=int(os.environ.get("CACHEKIT_FUZZ_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 60) | st.floats() | st.floats(0, 1)
           | st.text(max_size=12) | st.sampled_from(["attn", "mlp", "0-3,7", "linear", "step", "timestep", "diffusers", "paper"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=4),
                      max_leaves=12)


def mostly(usual, rare):
    """``usual`` nine times in ten, else ``rare``."""
    return st.integers(0, 9).flatmap(lambda i: rare if i == 0 else usual)


@st.composite
def entries(draw):
    """A policy entry: a registered or random type, and keys drawn from its fields or at random."""
    names = cachekit.registry().names("policy")
    kind = draw(mostly(st.sampled_from(names), values))
    cls = cachekit.registry().tables["policy"][kind].obj if isinstance(kind, str) and kind in names else None
    keys = [f.name for f in attrs.fields(cls) if f.init] if cls else ["label", "priority", "sites", "window"]
    entry = {} if draw(st.integers(0, 9)) == 0 else {"type": kind}
    for key in draw(st.lists(mostly(st.sampled_from(keys), st.text(max_size=6)), max_size=4)):
        if key in ("sites", "window", "cfg_window", "low_window", "high_window") and draw(st.booleans()):
            nested = ["kinds", "blocks", "names"] if key == "sites" else ["start", "end", "unit"]
            entry[key] = draw(st.dictionaries(st.sampled_from(nested) | st.text(max_size=4), values, max_size=3))
        else:
            entry[key] = draw(values)
    return entry


configs = mostly(st.fixed_dictionaries({}, optional={
    "policy": mostly(st.lists(entries(), max_size=3), entries() | values),
    "extends": mostly(st.sampled_from(cachekit.registry().names("preset")), values),
}), st.dictionaries(st.text(max_size=8) | st.integers(), values, max_size=3))


def check(load) -> None:
    """``load()`` either gives a config that survives a dump/load round trip, or fails cleanly."""
    try:
        config = load()
    except CachekitError as err:
        message = str(err)
        assert message and "\n" not in message and len(message) <= MAX_MESSAGE, message[:2000]
        return
    for fmt, parse in (("json", json.loads), ("toml", cachekit.config.tomllib.loads), ("yaml", yaml.safe_load)):
        assert cachekit.config.from_dict(parse(dump_config(config, fmt))) == config
    data = json.loads(dump_config(config, "json"))
    assert all(math.isfinite(v) for v in _leaves(data) if isinstance(v, float))  # nothing non-finite got through


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


@FUZZ
@given(config=configs)
def test_random_configs(config):
    check(lambda: load_config(config))


@FUZZ
@given(entry=entries(), fmt=st.sampled_from(["toml", "json", "yaml"]), cut=st.integers(0, 400), junk=st.text(max_size=5))
def test_random_edits_of_config_files(tmp_path_factory, entry, fmt, cut, junk):
    """A valid file with random text spliced in, in each format."""
    try:
        text = dump_config(load_config({"policy": [entry]}), fmt)
    except CachekitError:
        text = dump_config(load_config("fastercache"), fmt)
    cut = min(cut, len(text))
    path = tmp_path_factory.mktemp("fuzz") / f"config.{fmt}"
    path.write_text(text[:cut] + junk + text[cut + len(junk) // 2:])
    check(lambda: load_config(path))


@FUZZ
@given(data=st.binary(max_size=200), fmt=st.sampled_from(["toml", "json", "yaml"]))
def test_random_bytes_as_config_files(tmp_path_factory, data, fmt):
    path = tmp_path_factory.mktemp("fuzz") / f"config.{fmt}"
    path.write_bytes(data)
    check(lambda: load_config(path))


def test_fuzz_check_sees_a_bad_message():
    """The check above can fail: a multi-line or unbounded message is caught."""
    class Noisy(CachekitError):
        def __str__(self):
            return "x" * (MAX_MESSAGE + 1)

    def raises():
        raise Noisy()

    with pytest.raises(AssertionError):
        check(raises)
