"""The adapter contract: validate() refuses each mistake at enable, batched call_order, residual sites
with tuple outputs, and per-site CFG batch inputs (declared or detected)."""

import warnings

import pytest
import torch

import cachekit
from cachekit import Adapter, AdapterError, Site
from tests import toy
from tests.recording import Recorder, check_cached_values

STEPS = 12


class Attn(torch.nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(c, c, dtype=torch.float64)

    def forward(self, hidden_states, temb):
        return torch.tanh(self.proj(hidden_states) + temb[:, None, :])


class TupleBlock(torch.nn.Module):
    """A Mochi-like block: returns ``(hidden_states, encoder_hidden_states)``; ``temb`` by keyword."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.attn1 = Attn(c)
        self.ff = torch.nn.Linear(c, c, dtype=torch.float64)
        self.ctx = torch.nn.Linear(c, c, dtype=torch.float64)

    def forward(self, hidden_states, encoder_hidden_states, temb):
        h = hidden_states + self.attn1(hidden_states, temb=temb)
        h = h + self.ff(h)
        e = encoder_hidden_states + self.ctx(h.mean(1, keepdim=True))
        return h, e


class TupleDiT(torch.nn.Module):
    """Batched CFG along dim 0; hidden (B, S, C), timestep (B,), encoder_hidden_states (B, L, C)."""

    def __init__(self, c: int = 8, layers: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.t_embed = torch.nn.Linear(1, c, dtype=torch.float64)
        self.transformer_blocks = torch.nn.ModuleList(TupleBlock(c) for _ in range(layers))
        self.proj_out = torch.nn.Linear(c, c, dtype=torch.float64)

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        temb = self.t_embed(timestep[:, None].to(hidden_states.dtype))
        h, e = hidden_states, encoder_hidden_states
        for block in self.transformer_blocks:
            h, e = block(h, encoder_hidden_states=e, temb=temb)
        return (self.proj_out(h),)


class TupleAdapter(Adapter):
    name = "test-tuple"
    model_classes = ("TupleDiT",)

    def sites(self):
        sites = [Site("denoiser", "denoiser", "")]
        for i in range(len(self.model.transformer_blocks)):
            sites += [Site(f"blocks.{i}", "block", f"transformer_blocks.{i}", i, "denoiser", residual=True),
                      Site(f"blocks.{i}.attn", "attn.joint", f"transformer_blocks.{i}.attn1", i, f"blocks.{i}"),
                      Site(f"blocks.{i}.mlp", "mlp", f"transformer_blocks.{i}.ff", i, f"blocks.{i}")]
        return sites


def tuple_inputs(step: int, batch: int = 1):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, 6, 8, generator=g, dtype=torch.float64)
    text = torch.randn(batch, 3, 8, generator=g, dtype=torch.float64)
    t = torch.full((batch,), 1.0 - 0.05 * step, dtype=torch.float64)
    return torch.cat([x, x]), torch.cat([t, t]), torch.cat([0 * text, text])


def run_tuple(model, steps=STEPS):
    outs = []
    with torch.no_grad():
        for step in range(steps):
            outs.append(model(*tuple_inputs(step))[0])
    return outs


@pytest.fixture(autouse=True)
def adapters():
    toy.register()
    cachekit.register_adapter(TupleAdapter)
    yield
    cachekit.reload_plugins(keep_code=False)


def adapter_with(sites=None, **classvars):
    def make_sites(self):
        return sites(self.model) if callable(sites) else list(sites)

    body = {"name": "test-broken", "model_classes": ("Nothing",), **classvars}
    if sites is not None:
        body["sites"] = make_sites
    return type("Broken", (TupleAdapter,), body)


def base_sites(model):
    return TupleAdapter(model).sites()


# -- validate() ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mutate, message", [
    (lambda s: s[1:] + s[:1], r"site 'blocks.0' comes first.*the first site must be Site\(\"denoiser\", \"denoiser\", \"\"\)"),
    (lambda s: [s[0], s[2], s[1]] + s[3:], r"site 'blocks.0.attn' comes before its parent 'blocks.0'.*list parents first"),
    (lambda s: s[:2] + [Site("blocks.0.attn", "attn.joint", "transformer_blocks.0.attn1", 0, "blocks.O")] + s[3:],
     r"site 'blocks.0.attn': parent 'blocks.O' is not a site; did you mean 'blocks.0'\?"),
    (lambda s: s + [Site("blocks.1.mlp", "mlp", "transformer_blocks.1.ff", 1, "blocks.1")],
     r"site name 'blocks.1.mlp' is used twice.*names must be unique"),
    (lambda s: s[:2] + [Site("blocks.0.attn", "attn.joint", "transformer_blocks.0.attn", 0, "blocks.0")] + s[3:],
     r"site 'blocks.0.attn': module 'transformer_blocks.0.attn' not found in TupleDiT \(no 'attn' in 'transformer_blocks.0'; it has attn1, ff, ctx\)"),
    (lambda s: s[:2] + [Site("blocks.0.attn", "attention", "transformer_blocks.0.attn1", 0, "blocks.0")] + s[3:],
     r"site 'blocks.0.attn': kind 'attention' is not a site kind; use one of denoiser, block, attn.spatial"),
])
def test_validate_refuses_each_mistake_at_enable(mutate, message):
    cls = adapter_with(lambda model: mutate(base_sites(model)))
    model = TupleDiT()
    with pytest.raises(AdapterError, match=message):
        cls(model).validate()
    # and enable refuses it before any hook is installed
    cachekit.registry().tables["adapter"].pop("test-tuple")
    cachekit.register_adapter(type("Broken2", (cls,), {"model_classes": ("TupleDiT",)}))
    with pytest.raises(AdapterError, match=message):
        cachekit.enable(model, "reuse", num_inference_steps=STEPS, cfg=True)
    assert "forward" not in model.__dict__ and not hasattr(model, "_cachekit_session")


@pytest.mark.parametrize("classvars, message", [
    ({"cfg_layout": "interleaved"}, r"cfg_layout 'interleaved' is invalid; use 'batched' .* or 'split'"),
    ({"call_order": ("cond", "cond")}, r"call_order \('cond', 'cond'\) is invalid; name each of 'uncond', 'cond' once"),
    ({"batch_kwargs": "temb"}, r"batch_kwargs 'temb'.*a tuple of input names, or None"),
    ({"shared_kwargs": "rotary_emb"}, r"shared_kwargs 'rotary_emb'.*a tuple of input names, or None"),
    ({"batch_kwargs": ("temb",), "shared_kwargs": ("temb",)}, r"temb cannot be both in batch_kwargs"),
    ({"batch_axes": {"kv_cache": 0}}, r"batch_axes \{'kv_cache': 0\}.*a dict from input name to the dim \(1 or more\)"),
    ({"batch_axes": ("kv_cache",)}, r"batch_axes \('kv_cache',\).*a dict from input name"),
])
def test_validate_refuses_bad_class_settings(classvars, message):
    with pytest.raises(AdapterError, match=message):
        adapter_with(**classvars)(TupleDiT()).validate()


def test_validate_refuses_bad_site_batch_inputs():
    def sites(model):
        s = base_sites(model)
        return s[:2] + [Site("blocks.0.attn", "attn.joint", "transformer_blocks.0.attn1", 0, "blocks.0",
                             batch_inputs=("hidden_states", "tmeb"))] + s[3:]

    with pytest.raises(AdapterError, match=r"site 'blocks.0.attn': batch input 'tmeb' is not a parameter of Attn.forward "
                                           r"\(hidden_states, temb\)"):
        adapter_with(sites)(TupleDiT()).validate()


@pytest.mark.parametrize("site, classvars, message", [
    (dict(shared_inputs=("rope",)), {}, r"site 'blocks.0.attn': shared input 'rope' is not a parameter of Attn.forward"),
    (dict(batch_inputs=("temb",)), {"shared_kwargs": ("temb",)},
     r"site 'blocks.0.attn': temb is declared both as carrying the CFG branches .* and as shared by them"),
])
def test_validate_refuses_bad_site_shared_inputs(site, classvars, message):
    def sites(model):
        s = base_sites(model)
        return s[:2] + [Site("blocks.0.attn", "attn.joint", "transformer_blocks.0.attn1", 0, "blocks.0", **site)] + s[3:]

    with pytest.raises(AdapterError, match=message):
        adapter_with(sites, **classvars)(TupleDiT()).validate()


def test_batch_inputs_cut_every_input_whose_dim0_is_the_batch():
    """The rule of a site: inputs whose dim 0 is the batch are cut, by position or keyword, inside
    tuples, lists and dicts; declared carried inputs are cut whatever their dim 0, declared shared
    ones never; any other multiple of the batch is passed whole with one warning per input."""
    from cachekit.values import BatchInputs

    rule = BatchInputs("site 'x'", ("hidden_states", "temb", "rope"), carry=("rows",), shared=("rope",))
    hidden, temb, rope = torch.arange(4.0)[:, None], torch.arange(8.0).view(4, 2), torch.zeros(4, 3)
    rows, other, mask = torch.arange(8.0), torch.zeros(8, 1), torch.ones(4, 5)
    kwargs = dict(rope=(rope, rope), rows=rows, extra={"mask": mask}, masks=[mask], other=other, scale=torch.tensor(2.0),
                  steps=3)
    with pytest.warns(UserWarning, match=r"site 'x': input 'other' has 8 rows along dim 0 for a batch of 4 \(2 CFG "
                                         r"branches\); passed whole. Declare .*batch_inputs.* Site.shared_inputs"):
        args, cut = rule.select((hidden, temb), kwargs, 2, [1])
    assert torch.equal(args[0], hidden[2:]) and torch.equal(args[1], temb[2:])  # positional, named by the forward
    assert args[0].data_ptr() == hidden[2:].data_ptr()  # one branch: a view, no copy
    assert cut["rope"][0] is rope and cut["other"] is other and cut["scale"] is kwargs["scale"] and cut["steps"] == 3
    assert torch.equal(cut["rows"], rows[4:]) and cut["extra"]["mask"].shape == (2, 5) and cut["masks"][0].shape == (2, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per site and input
        rule.select((hidden,), {"other": other}, 2, [0])


def test_batch_axes_cut_along_their_dim():
    """An input declared in ``axes`` is cut along that dim, a dict of such tensors alike (a key/value
    cache ``(2, batch, heads, tokens, dim)``), as a view for contiguous branches; one whose dim is
    not the batch is refused in one line."""
    from cachekit.values import BatchInputs

    rule = BatchInputs("site 'x'", ("hidden_states", "kv_cache"), axes={"kv_cache": 1})
    hidden, cache = torch.arange(4.0)[:, None], torch.arange(2 * 4 * 3.0).view(2, 4, 3)
    (_, cut), _ = rule.select((hidden, {"full": cache}), {}, 2, [1])
    assert torch.equal(cut["full"], cache[:, 2:]) and cut["full"].data_ptr() == cache[:, 2:].data_ptr()
    _, kwargs = rule.select((hidden,), {"kv_cache": [cache]}, 4, [0, 2])
    assert torch.equal(kwargs["kv_cache"][0], cache[:, [0, 2]])
    with pytest.raises(ValueError, match=r"site 'x': input 'kv_cache' carries the CFG branches along dim 1, but has "
                                         r"shape \(2, 3\) for a batch of 4"):
        rule.select((hidden,), {"kv_cache": torch.zeros(2, 3)}, 2, [0])


def test_outputs_keep_their_structure_and_hand_back_what_is_not_a_tensor():
    """An output's tensors are cached; a tuple or list (nested alike) is built again around new
    tensors with its other items (None, a cache dict) as they came; an output holding no tensor is
    refused in one line."""
    from cachekit.values import unpack

    a, b, cache = torch.ones(2), torch.zeros(3), {"k": torch.ones(1)}
    tensors, build = unpack((a, None))
    assert tensors == (a,) and build((b,)) == (b, None)
    tensors, build = unpack((a, cache))
    assert build((b,))[1] is cache
    tensors, build = unpack([a, [b, None]])
    rebuilt = build((b, a))
    assert len(tensors) == 2 and type(rebuilt) is list and rebuilt[0] is b and rebuilt[1] == [a, None]
    with pytest.raises(TypeError, match="cannot cache a module output of type tuple holding no tensor"):
        unpack((None, cache))


def test_valid_adapters_pass():
    assert [s.name for s in TupleAdapter(TupleDiT()).validate()][:3] == ["denoiser", "stack", "blocks.0"]
    from cachekit.demo import tiny_latte_pipeline

    assert len(cachekit.find_adapter(tiny_latte_pipeline().transformer).validate()) == 1 + 1 + 2 * 7  # + the stack


# -- batched call_order ------------------------------------------------------------------------

class CondFirst(toy.ToyDenoiser):
    """The toy model driven with the batch [cond, uncond]."""


class CondFirstAdapter(toy.ToyAdapter):
    name = "test-cond-first"
    model_classes = ("CondFirst",)
    call_order = ("cond", "uncond")


def cond_first_outputs(model, steps=STEPS):
    x = toy.latents()
    ones, zeros = torch.ones(1, 1, dtype=x.dtype), torch.zeros(1, 1, dtype=x.dtype)
    with torch.no_grad():
        return [model(torch.cat([x, x]), torch.cat([toy.timestep(s, 1)] * 2), torch.cat([ones, zeros]))[0]
                for s in range(steps)]


def test_batched_call_order_keeps_cond_slot():
    cachekit.register_adapter(CondFirstAdapter)
    model = CondFirst()
    reference = cond_first_outputs(model)
    session = cachekit.enable(model, {"policy": [{"type": "cfg_cache", "interval": 3}]}, num_inference_steps=STEPS, cfg=True)
    outs = cond_first_outputs(model)
    cachekit.disable(model)
    assert session.report().counts()["reconstruct"] > 0
    for ref, out in zip(reference, outs):  # the cond slot (first) is always computed, never overwritten
        assert torch.allclose(out[:1], ref[:1], rtol=0, atol=1e-12)
    rebuilt = [s for s in range(STEPS) if session.plan.action((s, "denoiser", "uncond")).kind == "reconstruct"]
    assert all(not torch.equal(outs[s][1:], reference[s][1:]) for s in rebuilt)  # uncond (second) is rebuilt


# -- residual sites with tuple outputs, per-site batch inputs -------------------------------------

BLOCK_REUSE = {"policy": [{"type": "reuse", "sites": {"kinds": ["block"]}, "interval": 2,
                           "window": {"start": 0.25, "end": 1.0}}]}


def test_residual_site_with_tuple_output_caches_each_tensor():
    model = TupleDiT()
    reference = run_tuple(model)
    session = cachekit.enable(model, BLOCK_REUSE, num_inference_steps=STEPS, cfg=True)
    with Recorder(session, ["blocks.0", "blocks.1"]) as recorder:
        outs = run_tuple(model)
    cachekit.disable(model)
    report = session.report()
    assert report.counts()["reuse"] == session.plan.counts()["reuse"] > 0
    # each reused block returns, per output tensor, its input plus the difference stored when it computed
    assert check_cached_values(session, recorder) == report.counts()["reuse"]
    # before the window every block computes: bitwise the uncached outputs
    assert all(torch.equal(o, r) for o, r in zip(outs[:3], reference[:3]))
    assert max((o - r).abs().max().item() for o, r in zip(outs, reference)) > 0


def test_residual_reuse_adds_each_cached_difference_to_its_input():
    """A block reused with an unchanged input returns exactly what it returned when computed."""
    model = TupleDiT()
    block = model.transformer_blocks[0]
    args = tuple_inputs(0)
    with torch.no_grad():
        reference = model(*args)[0]
    session = cachekit.enable(model, {"policy": [{"type": "reuse", "sites": {"kinds": ["block"]}, "interval": 4}]},
                              num_inference_steps=2, cfg=True)
    seen = []
    handle = block.register_forward_hook(lambda m, a, kw_out: seen.append(kw_out))
    with torch.no_grad():
        first, second = model(*args)[0], model(*args)[0]
    handle.remove()
    cachekit.disable(model)
    assert session.report().counts()["reuse"] == 2 * 2  # two blocks x two branches at step 1
    assert torch.equal(first, reference) and torch.allclose(second, reference, rtol=0, atol=1e-12)
    computed, reused = seen[0], seen[-1]  # (the first run's profiling calls come between)
    assert isinstance(reused, tuple) and len(reused) == 2
    assert all(a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(computed, reused))


def test_residual_output_unlike_its_input_is_refused_clearly():
    class Shrinks(torch.nn.Module):
        def forward(self, hidden_states):
            return hidden_states[:, :1]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Shrinks()

        def forward(self, hidden_states, timestep=None, return_dict=False):
            return (self.block(hidden_states),)

    @cachekit.register_adapter
    class ShrinkAdapter(Adapter):
        name = "test-shrinks"
        model_classes = ("Model",)

        def sites(self):
            return [Site("denoiser", "denoiser", ""), Site("blocks.0", "block", "block", 0, "denoiser", residual=True)]

    model = Model()
    cachekit.enable(model, {"policy": [{"type": "reuse", "sites": {"kinds": ["block"]}}]}, num_inference_steps=4)
    with pytest.raises(AdapterError, match=r"residual site 'blocks.0': output 0 has shape \(2, 1, 3\) but its input "
                                           r"'hidden_states' has shape \(2, 4, 3\); set residual=False"):
        model(torch.zeros(2, 4, 3))
    cachekit.disable(model)


def uncond_reuse(kind):
    import attrs

    from cachekit.policies.reuse import broadcast

    @attrs.frozen(kw_only=True)
    class UncondReuse(cachekit.Policy):
        type_name = "test-uncond-reuse"
        default_branches = ("uncond",)

        def plan_site(self, site, branch, steps, run):
            return broadcast(steps, 2)

    cachekit.register_policy(UncondReuse)
    return {"policy": [{"type": "test-uncond-reuse", "sites": {"kinds": [kind]}, "window": {"start": 0.25, "end": 1.0}}]}


def test_detected_batch_inputs_split_temb_with_the_branches():
    """The attention takes ``temb`` (B, C) by keyword: only the cond branch computes at reused
    steps, so temb must be cut with the batch (naming only hidden_states gave an IndexError-like
    shape error deep in the model)."""
    model = TupleDiT()
    reference = run_tuple(model)
    config = uncond_reuse("attn.joint")
    session = cachekit.enable(model, config, num_inference_steps=STEPS, cfg=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outs = run_tuple(model)
    cachekit.disable(model)
    assert session.report().counts()["reuse"] == session.plan.counts()["reuse"] > 0
    for ref, out in zip(reference, outs):  # cond (second half of the batch) is always computed
        assert torch.allclose(out[1:], ref[1:], rtol=0, atol=1e-12)


def test_declared_batch_inputs_per_site():
    class Declared(TupleAdapter):
        name = "test-declared"
        model_classes = ("DeclaredDiT",)
        batch_kwargs = ("hidden_states",)  # the old single list: not enough for the attention

        def sites(self):
            out = []
            for s in super().sites():
                if s.kind == "attn.joint":
                    s = Site(s.name, s.kind, s.module_path, s.block, s.parent, batch_inputs=("hidden_states", "temb"))
                out.append(s)
            return out

    class DeclaredDiT(TupleDiT):
        """The same model under a class name only the declaring adapter claims."""

    cachekit.register_adapter(Declared)
    model = DeclaredDiT()
    reference = run_tuple(model)
    session = cachekit.enable(model, uncond_reuse("attn.joint"), num_inference_steps=STEPS, cfg=True)
    outs = run_tuple(model)
    cachekit.disable(model)
    assert session.report().counts()["reuse"] > 0
    assert all(torch.allclose(o[1:], r[1:], rtol=0, atol=1e-12) for o, r in zip(outs, reference))


def test_ambiguous_detection_warns_and_names_the_input():
    class Folded(torch.nn.Module):
        """Takes a (B * 2, C) tensor: two rows per sample, so it carries the branches folded."""

        def forward(self, hidden_states, rows):
            return hidden_states + rows.view(hidden_states.shape[0], 2, -1).sum(1)[:, None, :]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Folded()

        def forward(self, hidden_states, timestep, return_dict=False):
            rows = timestep.repeat_interleave(2)[:, None].expand(-1, hidden_states.shape[-1])
            return (self.attn(hidden_states, rows=rows),)

    @cachekit.register_adapter
    class FoldedAdapter(Adapter):
        name = "test-folded"
        model_classes = ("Model",)

        def sites(self):
            return [Site("denoiser", "denoiser", ""), Site("blocks.0.attn", "attn.joint", "attn", 0, "denoiser")]

    model = Model()
    cachekit.enable(model, uncond_reuse("attn.joint"), num_inference_steps=4, cfg=True)
    with pytest.warns(UserWarning, match=r"site 'blocks.0.attn': input 'rows' has 4 rows along dim 0 for a batch of 2 "
                                         r"\(2 CFG branches\); passed whole. Declare Site.batch_inputs"):
        with pytest.raises(RuntimeError):  # passed whole, the folded rows do not fit the one-branch batch
            for step in range(4):
                model(torch.zeros(2, 3, 5), torch.full((2,), float(step)))
    cachekit.disable(model)


def test_denoiser_timing_splits_the_timestep_without_declaring_it():
    """CogVideoX-like adapters once had to list ``timestep`` or the timing of the one-branch call
    failed ("could not time the model (AssertionError: )")."""
    model = TupleDiT()
    cachekit.enable(model, {"policy": [{"type": "fastercache", "sites": {"kinds": ["attn"]}}]},
                    num_inference_steps=STEPS, cfg=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(*tuple_inputs(0))
    cachekit.disable(model)
