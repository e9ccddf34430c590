"""The adapter interface: how cachekit finds the sites, CFG layout and inputs of a model family."""

from __future__ import annotations

import abc
import difflib
import inspect
from typing import Any, ClassVar

import torch

from .errors import AdapterError
from .registry import registry
from .sites import BRANCHES, SITE_KINDS, STACK, Site, check_branches, with_stack
from .values import BatchInputs

DOCS_ADAPTER = "docs/writing-an-adapter.md"


class Adapter(abc.ABC):
    """Describes one model family to cachekit. Subclasses set the class variables and ``sites``.

    ``cfg_layout`` is ``"batched"`` (one call per step with the branches along the batch, in
    ``call_order``) or ``"split"`` (one call per branch, in ``call_order``, or one call per entry of
    ``call_groups`` where some calls carry several branches). :meth:`validate` checks the whole
    description when a session is enabled.
    """

    name: ClassVar[str]
    #: Class names of the transformers this adapter handles, matched along the model's MRO.
    model_classes: ClassVar[tuple[str, ...]]
    cfg_layout: ClassVar[str] = "batched"
    #: Every branch the model's pipelines call, in the order they lie along the batch (batched) or are
    #: called (split): "uncond" and "cond", and any other guidance pass by its cache_context name.
    call_order: ClassVar[tuple[str, ...]] = ("uncond", "cond")
    #: Split layout where a call carries several branches along dim 0: the denoiser calls of one step in
    #: the order the pipeline makes them, each ``(cache_context name, its branches in batch order)``
    #: (LTX-2: ``(("cond_uncond", ("uncond", "cond")), ("uncond_stg", ("uncond_stg",)), ...)``); their
    #: branches, in order, are ``call_order``. None: one call per branch, named by it.
    call_groups: ClassVar[tuple[tuple[str, tuple[str, ...]], ...] | None] = None
    #: When only some CFG branches of a batched call compute, every tensor input of a site whose
    #: dim 0 is the call's batch is cut to them (see :class:`~cachekit.values.BatchInputs`). These
    #: settle what dim 0 cannot tell, at every site whose module has such an input (a site's
    #: ``batch_inputs`` / ``shared_inputs`` add to them): inputs that carry the branches with
    #: another dim 0, and inputs shared by the branches whose dim 0 may equal or divide the batch
    #: (rotary tables with one row per token).
    batch_kwargs: ClassVar[tuple[str, ...] | None] = None
    shared_kwargs: ClassVar[tuple[str, ...] | None] = None
    #: Inputs that carry the branches along another dim than 0, by name (a key/value cache laid out
    #: ``(2, batch, heads, tokens, dim)``: ``{"kv_cache": 1}``; the tensors of a dict or list alike).
    batch_axes: ClassVar[dict[str, int] | None] = None
    #: The forward parameter of the model that carries the timestep (by keyword or position).
    timestep_input: ClassVar[str] = "timestep"
    #: The forward parameter of the model that carries the noisy latents when the call passes no
    #: tensor first (by keyword; a list of per-item tensors: the first).
    latent_input: ClassVar[str] = "hidden_states"

    def __init__(self, model: torch.nn.Module, pipe: Any = None) -> None:
        self.model = model
        #: The pipeline that owns ``model``, or None for a bare transformer.
        self.pipe = pipe
        if is_modular(pipe) and self.call_groups is None and set(self.call_order) == set(BRANCHES):
            # a modular pipeline's guider calls the model once per condition, cond first
            self.cfg_layout, self.call_order = "split", ("cond", "uncond")

    @abc.abstractmethod
    def sites(self) -> list[Site]:
        """Every cacheable site, parents before children, the ``denoiser`` site first."""

    def stack_blocks(self, sites: list[Site]) -> list[Site]:
        """The block sites the ``stack`` site spans, in call order: by default every block the model
        calls directly (kind ``block``, parent ``denoiser``). Return [] where the model transforms the
        hidden states between blocks (a skipped block must be able to pass its input through)."""
        return [s for s in sites if s.kind == "block" and s.parent == "denoiser"]

    def stack_head(self, sites: list[Site]) -> list[Site]:
        """Blocks the model runs right before the stack's span, never part of it (default: none)."""
        return []

    def cfg_active(self, pipe: Any) -> bool:
        """Whether the pipeline's current call runs classifier-free guidance, read at its first
        denoiser call: its ``do_classifier_free_guidance`` property, a modular pipeline's guider
        running more than one condition, else ``guidance_scale > 1``."""
        if hasattr(type(pipe), "do_classifier_free_guidance"):
            return bool(pipe.do_classifier_free_guidance)
        if is_modular(pipe) and hasattr(getattr(pipe, "guider", None), "num_conditions"):
            return pipe.guider.num_conditions > 1
        scale = getattr(pipe, "_guidance_scale", None)
        if scale is None and is_modular(pipe):  # guidance is an input of the call, which the pipeline keeps in its state
            raise AdapterError(
                f"cannot tell whether {type(pipe).__name__} runs classifier-free guidance (a modular pipeline without "
                "a guider); enable its transformer instead: cachekit.enable(pipe.transformer, config, "
                "num_inference_steps=..., cfg=...)")
        if scale is None:
            raise AdapterError(
                f"cannot tell whether {type(pipe).__name__} runs classifier-free guidance (no "
                f"do_classifier_free_guidance, no _guidance_scale); adapter '{self.name}' must override cfg_active"
            )
        return float(scale) > 1.0

    def loop_steps(self, pipe: Any) -> int | None:
        """The steps of the denoising loop that starts now, where the pipeline's loop does not walk all
        its scheduler's timesteps: fewer (a loop over ``timesteps[:-1]``) are the schedule's first
        ones; more (SkyReels-V2's asynchronous diffusion forcing walks a
        timestep matrix) are counted call by call, and the run has no timesteps. Default None: the
        loop walks the whole schedule."""
        return None

    def is_step_call(self, args: tuple, kwargs: dict[str, Any]) -> bool:
        """Whether a denoiser call is a denoising step (default: always). Override for a pipeline
        that also calls the model to fill a key/value cache: such a call computes plainly and is
        no step of a run."""
        return True

    def run_branches(self, pipe: Any) -> tuple[str, ...]:
        """The branches the pipeline's current call runs, read when it sets its timesteps: "uncond" and
        "cond" where :meth:`cfg_active`, else "cond". Override where a pipeline runs other passes."""
        return BRANCHES if self.cfg_active(pipe) else ("cond",)

    def step_calls(self, branches: tuple[str, ...]) -> tuple[tuple[str | None, tuple[str, ...]], ...]:
        """The denoiser calls of one step of a run of ``branches``, in call order: each its
        cache_context name (None: the pipeline's name is not needed, batched) and the branches it
        carries along dim 0, in batch order. Calls left with no branch of the run are left out."""
        if self.cfg_layout == "batched":
            groups: tuple = ((None, self.call_order),)
        else:
            groups = self.call_groups or tuple((b, (b,)) for b in self.call_order)
        calls = ((name, tuple(b for b in group if b in branches)) for name, group in groups)
        return tuple((name, group) for name, group in calls if group)

    def example_call(self, batch: int) -> tuple[tuple, dict[str, Any]]:
        """Inputs for one forward of ``self.model`` with ``batch`` samples (used by dry-run cost counting)."""
        raise AdapterError(f"adapter '{self.name}' cannot build example inputs; run the pipeline once instead")

    def module(self, site: Site) -> torch.nn.Module:
        return self.model.get_submodule(site.module_path) if site.module_path else self.model

    def modules(self, site: Site) -> list[torch.nn.Module]:
        """Every module that plays ``site`` and is hooked for it: ``module(site)``, or one per expert
        where a pipeline switches between transformers of one architecture within a run."""
        return [self.module(site)]

    def batch_inputs_of(self, site: Site) -> BatchInputs:
        """Which inputs of ``site``'s calls carry the CFG branches: detected from dim 0, with this
        adapter's and the site's declarations (resolved once per site, used at each call that
        computes only some of the branches it carries)."""
        params, _ = forward_parameters(self.module(site))
        return BatchInputs(f"site '{site.name}'", params, (*(self.batch_kwargs or ()), *(site.batch_inputs or ())),
                           (*(self.shared_kwargs or ()), *(site.shared_inputs or ())), self.batch_axes or {})

    def frame_grid(self, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int]:
        """(frames, height, width) of the token grid of a denoiser call whose output is a token
        sequence (``Site.layout = "BLC"``), read from the call's inputs."""
        raise AdapterError(f"adapter '{self.name}' declares a token-sequence layout but no frame_grid")

    def validate(self) -> list[Site]:
        """Check the class settings and ``sites()`` against the model; return the sites. Raises an
        AdapterError naming the setting or site and the fix."""
        self._check_settings()
        sites = self.sites()
        if not sites or sites[0].kind != "denoiser" or sites[0].module_path != "":
            first = f"site '{sites[0].name}' comes first" if sites else "sites() returned no site"
            raise AdapterError(f"adapter '{self.name}': {first}; the first site must be "
                               'Site("denoiser", "denoiser", "") (the whole model, whose calls track the run)')
        index: dict[str, int] = {}
        names = [site.name for site in sites]
        for i, site in enumerate(sites):
            self._check_site(site, i, index, names)
            index[site.name] = i
        if STACK in index:
            raise AdapterError(f"adapter '{self.name}': site name '{STACK}' is reserved for the block stack, which "
                               "cachekit adds from stack_blocks(); rename the site")
        return with_stack(sites, self.stack_blocks(sites), self.stack_head(sites))

    def _check_settings(self) -> None:
        def bad(setting: str, value: Any, allowed: str) -> AdapterError:
            return AdapterError(f"adapter '{getattr(self, 'name', type(self).__name__)}': {setting} {value!r} is invalid; {allowed}")

        if not isinstance(getattr(self, "name", None), str):
            raise bad("name", getattr(self, "name", None), "set a unique string such as 'mochi'")
        if not isinstance(self.model_classes, tuple) or not all(isinstance(c, str) for c in self.model_classes):
            raise bad("model_classes", self.model_classes, 'use a tuple of class names such as ("MochiTransformer3DModel",)')
        if self.cfg_layout not in ("batched", "split"):
            raise bad("cfg_layout", self.cfg_layout, "use 'batched' (one call, branches along the batch) or 'split' "
                                                     "(one call per branch)")
        try:
            check_branches(self.call_order if isinstance(self.call_order, tuple) else None, what="call_order")
            if "uncond" not in self.call_order:
                raise ValueError("uncond is missing")
        except ValueError:
            raise bad("call_order", self.call_order, f"name each of {', '.join(map(repr, BRANCHES))} once (and any "
                                                      "other pass by its cache_context name, such as 'uncond_stg'), in "
                                                      "the order the branches lie along the batch (batched) or are "
                                                      "called (split)") from None
        if self.call_groups is not None:
            self._check_groups(bad)
        for setting in ("batch_kwargs", "shared_kwargs"):
            names = getattr(self, setting)
            if names is not None and not (isinstance(names, tuple) and all(isinstance(k, str) for k in names)):
                raise bad(setting, names, "use a tuple of input names, or None (the inputs that carry the batch are "
                                          "detected from dim 0)")
        axes = self.batch_axes
        if axes is not None and not (isinstance(axes, dict) and all(
                isinstance(k, str) and type(v) is int and v > 0 for k, v in axes.items())):
            raise bad("batch_axes", axes, "use a dict from input name to the dim (1 or more) along which it carries "
                                          "the CFG branches, or None")
        both = set(self.batch_kwargs or ()) & set(self.shared_kwargs or ())
        if both:
            raise bad("shared_kwargs", self.shared_kwargs, f"{', '.join(sorted(both))} cannot be both in batch_kwargs "
                                                           "(carries the CFG branches) and shared by them")

    def _check_groups(self, bad: Any) -> None:
        groups = self.call_groups
        shape = (isinstance(groups, tuple) and all(
            isinstance(g, tuple) and len(g) == 2 and isinstance(g[0], str) and isinstance(g[1], tuple) and g[1]
            for g in groups))
        if not shape:
            raise bad("call_groups", groups, "use a tuple of (cache_context name, (branch, ...)) pairs, one per "
                                             "denoiser call of a step, such as (('cond_uncond', ('uncond', 'cond')), "
                                             "('uncond_stg', ('uncond_stg',)))")
        if self.cfg_layout != "split":
            raise bad("call_groups", groups, "set cfg_layout = 'split' (several calls per step) or leave call_groups "
                                             "unset (batched: one call carries call_order)")
        flat = tuple(b for _, group in groups for b in group)
        if flat != self.call_order:
            raise bad("call_groups", groups, f"list the branches of call_order {self.call_order} once each, in that "
                                             f"order (they list {flat})")
        names = [name for name, _ in groups]
        if len(set(names)) != len(names):
            raise bad("call_groups", groups, "give each call its own cache_context name")

    def _check_site(self, site: Site, i: int, index: dict[str, int], names: list[str]) -> None:
        where = f"adapter '{self.name}': site '{site.name}'"
        if not isinstance(site, Site):
            raise AdapterError(f"adapter '{self.name}': sites()[{i}] is a {type(site).__name__}; return cachekit.Site objects")
        if site.name in index:
            raise AdapterError(f"adapter '{self.name}': site name '{site.name}' is used twice (sites {index[site.name]} "
                               f"and {i}); names must be unique")
        if site.kind not in SITE_KINDS:
            raise AdapterError(f"{where}: kind '{site.kind}' is not a site kind; use one of {', '.join(SITE_KINDS)}")
        if i and site.kind == "denoiser":
            raise AdapterError(f"{where}: only the first site is the denoiser; give this one another kind")
        if i and site.parent is None:
            raise AdapterError(f"{where} has no parent; name the enclosing site ('denoiser' for a module the model "
                               "calls directly)")
        if site.parent is not None and site.parent not in index:
            if site.parent in names:
                raise AdapterError(f"{where} comes before its parent '{site.parent}'; list parents first")
            close = difflib.get_close_matches(site.parent, list(index), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; sites so far: {', '.join(index)}"
            raise AdapterError(f"{where}: parent '{site.parent}' is not a site{hint}")
        if site.block is not None and (not isinstance(site.block, int) or isinstance(site.block, bool) or site.block < 0):
            raise AdapterError(f"{where}: block {site.block!r} is not a block index; use an int >= 0, or None")
        module = self._resolve(site, where)
        params, open_kwargs = forward_parameters(module)
        named = (("batch input", site.batch_inputs or ()), ("shared input", site.shared_inputs or ()),
                 ("residual input", site.residual if isinstance(site.residual, tuple) else ()))
        both = set((*(self.batch_kwargs or ()), *(site.batch_inputs or ()))) & set(
            (*(self.shared_kwargs or ()), *(site.shared_inputs or ())))
        if both and (site.batch_inputs or site.shared_inputs):
            raise AdapterError(f"{where}: {', '.join(sorted(both))} is declared both as carrying the CFG branches "
                               "(batch_inputs / batch_kwargs) and as shared by them (shared_inputs / shared_kwargs)")
        for what, names in named:
            for name in names:
                if name not in params and not open_kwargs:
                    raise AdapterError(f"{where}: {what} '{name}' is not a parameter of "
                                       f"{type(module).__name__}.forward ({', '.join(params)})")

    def _resolve(self, site: Site, where: str) -> torch.nn.Module:
        try:
            module = self.module(site)
        except AttributeError:
            parts, found = site.module_path.split("."), self.model
            for depth, part in enumerate(parts):
                if not hasattr(found, part) or not isinstance(getattr(found, part), torch.nn.Module):
                    parent = ".".join(parts[:depth]) or "the model"
                    children = ", ".join(name for name, _ in found.named_children()) or "no submodules"
                    raise AdapterError(f"{where}: module '{site.module_path}' not found in {type(self.model).__name__} "
                                       f"(no '{part}' in '{parent}'; it has {children})") from None
                found = getattr(found, part)
            raise
        if not isinstance(module, torch.nn.Module):
            raise AdapterError(f"{where}: module(site) returned a {type(module).__name__}; return a torch.nn.Module")
        return module


def forward_parameters(module: torch.nn.Module) -> tuple[tuple[str, ...], bool]:
    """The names of ``module``'s named forward parameters in order, and whether it takes ``**kwargs``."""
    params = list(inspect.signature(type(module).forward).parameters.values())[1:]
    named = tuple(p.name for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD))
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


#: The children of a block with a self-attention ``attn1``, a cross-attention ``attn2`` and a
#: feed-forward ``ff`` (the diffusers ``BasicTransformerBlock`` layout many video DiTs share).
SELF_CROSS_FF: tuple[tuple[str, str, str], ...] = (
    ("attn.joint", "attn.joint", "attn1"), ("attn.cross", "attn.cross", "attn2"), ("mlp", "mlp", "ff"),
)


class BlockListAdapter(Adapter):
    """An adapter for a DiT whose blocks form one list: its sites come from a table.

    Each block ``i`` of ``block_list`` is a residual ``block`` site ``blocks.i`` with one child site
    per ``block_children`` entry ``(name suffix, kind, module attribute)``, e.g. ``("attn.joint",
    "attn.joint", "attn1")`` (a dotted attribute path reaches deeper); a child whose module is
    ``None`` in a block is left out there.
    """

    block_list: ClassVar[str] = "transformer_blocks"
    block_children: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    #: The axes of the transformer's output (see :class:`~cachekit.sites.Site`).
    output_layout: ClassVar[str] = "BCFHW"

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout=self.output_layout)]
        for i, module in enumerate(self.model.get_submodule(self.block_list)):
            block, path = f"blocks.{i}", f"{self.block_list}.{i}"
            sites.append(Site(block, "block", path, i, "denoiser", residual=True))
            sites += [Site(f"{block}.{suffix}", kind, f"{path}.{attr}", i, block)
                      for suffix, kind, attr in self.block_children if _attribute(module, attr) is not None]
        return sites


def is_modular(pipe: Any) -> bool:
    """Whether ``pipe`` is a diffusers modular pipeline (its guider calls the model per condition)."""
    return any(cls.__name__ == "ModularPipeline" and cls.__module__.startswith("diffusers.")
               for cls in type(pipe).__mro__)


def _attribute(module: torch.nn.Module, path: str) -> Any:
    """``module``'s attribute at the dotted ``path``; None where a part of it is missing or None."""
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def find_adapter(model: torch.nn.Module, pipe: Any = None) -> Adapter:
    """The registered adapter for ``model``'s class (or its nearest base class), bound to ``pipe``."""
    adapters = [entry.obj for entry in registry().entries("adapter")]
    for cls in type(model).__mro__:
        matching = [adapter for adapter in adapters if cls.__name__ in adapter.model_classes]
        if len(matching) > 1:
            raise AdapterError(f"adapters {', '.join(repr(a.name) for a in matching)} all claim {cls.__name__}; "
                               "uninstall or unregister all but one")
        if matching:
            return matching[0](model, pipe)
    known = ", ".join(f"{a.name} ({', '.join(a.model_classes)})" for a in adapters if a.model_classes) or "none"
    raise AdapterError(
        f"no cachekit adapter for {type(model).__name__}; registered adapters: {known}. "
        f"To add one, subclass cachekit.Adapter and register it, or describe the model in a spec and pass "
        f"enable(..., adapter='spec.toml') (see {DOCS_ADAPTER})"
    )


def adapter_for(model: torch.nn.Module, adapter: Any = None, pipe: Any = None) -> Adapter:
    """The adapter of ``model``: the registered one for its class (``adapter`` None), an Adapter
    subclass, or a generic spec (a mapping or a TOML/JSON/YAML file) naming the model's class."""
    if adapter is None:
        return find_adapter(model, pipe)
    if not (isinstance(adapter, type) and issubclass(adapter, Adapter)):
        adapter = registry().get("adapter", "generic").from_spec(adapter)
    names = [cls.__name__ for cls in type(model).__mro__]
    if not any(name in adapter.model_classes for name in names):
        raise AdapterError(f"adapter '{adapter.name}' is for {', '.join(adapter.model_classes) or 'no model class'}, "
                           f"not {type(model).__name__}; name the model's class in its model_classes (model_class "
                           "in a spec)")
    return adapter(model, pipe)
