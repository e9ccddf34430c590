"""Kits for plugin authors: ``check_adapter`` runs a pipeline through what an adapter must get right."""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any, Callable

import attrs
import torch

from .adapter import adapter_for
from .api import Session, disable, enable
from .config import ConfigLike
from .errors import CachekitError
from .policy import COMPUTE, ONLINE, SKIP
from .sites import Site


@attrs.frozen
class AdapterCheck:
    """What ``check_adapter`` ran and found. ``failures`` is empty when every check passed."""

    adapter: str
    steps: int
    branches: tuple[str, ...]
    #: Site kind -> how many nodes of that kind were reused or rebuilt, over every cached run.
    cached_nodes: dict[str, int]
    #: The site whose module's calls were counted (the first block), and its branch-evaluations:
    #: planned (denoiser branches computed) and measured, over the ``config`` run.
    first_block: str
    first_block_planned: int
    first_block_measured: float
    #: Branch-evaluations of an uncached run: steps x branches.
    first_block_uncached: int
    #: The checks that ran, in order.
    checked: tuple[str, ...]
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        lines = [f"check_adapter: adapter '{self.adapter}', {self.steps} steps, branches {', '.join(self.branches)}",
                 *(f"  ok    {name}" for name in self.checked if not any(f.startswith(name) for f in self.failures)),
                 *(f"  FAIL  {failure}" for failure in self.failures),
                 "  cached nodes per site kind: " + ", ".join(f"{k} {n}" for k, n in sorted(self.cached_nodes.items())),
                 f"  calls into '{self.first_block}' (branch-evaluations): uncached {self.first_block_uncached}, "
                 f"planned {self.first_block_planned}, measured {self.first_block_measured:g}"]
        return "\n".join(lines)


def check_adapter(build_pipeline: Callable[[], Any], call_kwargs: Callable[[Any, int], dict[str, Any]], *,
                  steps: int = 10, config: ConfigLike = "fastercache", adapter: Any = None,
                  raise_on_failure: bool = True) -> AdapterCheck:
    """Check an adapter on a pipeline: ``build_pipeline()`` returns a pipeline whose transformer the
    adapter handles, ``call_kwargs(pipe, steps)`` the keyword arguments of one seeded call with CFG
    that returns latents (prompt embeddings, ``num_inference_steps=steps``, guidance,
    ``output_type="latent"``, a fresh generator). ``adapter``: an Adapter subclass or a generic spec
    to check instead of the registered adapter.

    Checks, each on the same pipeline: every site hooked and computed gives bitwise the uncached
    output; under ``config`` and then under a ``reuse`` of each site kind ``config`` left alone, the
    executed decisions equal the plan, outputs are finite and every site kind is reused or rebuilt
    at least once; the first block is entered once per denoiser branch the plan computes (so
    CFG-Cache really skips the uncond branch); a call with ``sigmas=`` / ``timesteps=`` runs where
    the pipeline takes them; ``disable()`` restores bitwise. Raises an AssertionError listing every
    failure (``raise_on_failure=False``: returns them in the result)."""
    pipe = build_pipeline()
    checker = _Checker(pipe, call_kwargs, steps, adapter)
    result = checker.run(config)
    if raise_on_failure and result.failures:
        raise AssertionError(f"check_adapter failed for adapter '{result.adapter}': " + "; ".join(result.failures))
    return result


def _latents(output: Any) -> torch.Tensor:
    for name in ("frames", "images", "latents"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot read latents from a {type(output).__name__}; call_kwargs must ask for output_type='latent'")


class _Checker:
    def __init__(self, pipe: Any, call_kwargs: Callable[[Any, int], dict[str, Any]], steps: int, adapter: Any) -> None:
        self.pipe, self.call_kwargs, self.steps, self.adapter = pipe, call_kwargs, steps, adapter
        self.failures: list[str] = []
        self.checked: list[str] = []
        self.cached: dict[str, int] = {}

    def fail_unless(self, name: str, passed: bool, detail: str) -> bool:
        self.checked.append(name)
        if not passed:
            self.failures.append(f"{name}: {detail}")
        return passed

    def call(self, **overrides: Any) -> torch.Tensor:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", UserWarning)  # idle-policy notes of short runs
            return _latents(self.pipe(**{**self.call_kwargs(self.pipe, self.steps), **overrides}))

    def cached_call(self, name: str, config: ConfigLike, counter: "_BranchCounter | None" = None,
                    **overrides: Any) -> tuple[Session, torch.Tensor] | None:
        """Run under ``config``; record whether the executed decisions equal the plan and are finite.
        With a ``counter``, a first run profiles the model and the second, counted, is checked."""
        session = enable(self.pipe, config, adapter=self.adapter)
        try:
            if counter is not None:
                self.call(**overrides)
                with counter:
                    out = self.call(**overrides)
            else:
                out = self.call(**overrides)
        except Exception as err:  # a failure to report, not to crash the kit on
            self.fail_unless(name, False, f"the cached call raised {type(err).__name__}: {err}")
            return None
        finally:
            disable(self.pipe)
        try:
            report = session.report()
        except CachekitError as err:  # e.g. a split spec on a batched pipeline: its runs never end
            self.fail_unless(name, False, f"the cached call's run did not end as planned: {err}")
            return None
        plan = {node: action.kind for node, action in session.plan.nodes() if action.kind not in (SKIP, ONLINE)}
        executed = {node: kind for node, kind in report.executed.items() if node in plan}
        wrong = [node for node in plan if executed.get(node) != plan[node]]
        self.fail_unless(f"{name}: executed = plan", not wrong,
                         f"{len(wrong)} of {len(plan)} nodes differ, first {wrong[:1]}: planned "
                         f"{plan[wrong[0]] if wrong else ''}, executed {executed.get(wrong[0]) if wrong else ''}")
        self.fail_unless(f"{name}: finite", bool(torch.isfinite(out).all()), "the output has NaN or inf")
        sites = {site.name: site for site in session.plan.sites}
        for (_, site, _), kind in report.executed.items():
            if kind != COMPUTE:
                key = sites[site].kind
                self.cached[key] = self.cached.get(key, 0) + 1
        return session, out

    def run(self, config: ConfigLike) -> AdapterCheck:
        adapter = adapter_for(self.pipe.transformer, self.adapter, self.pipe)
        sites = adapter.validate()
        block = _first_block(sites)
        counter = _BranchCounter(adapter.modules(block))
        with counter:
            reference = self.call()
        uncached_rows = counter.rows

        kinds = sorted({site.kind for site in sites})
        # every site hooked, every node computed (interval 1): bitwise the uncached output
        all_compute = {"policy": [{"type": "reuse", "label": "all-compute", "interval": 1, "sites": {"kinds": kinds}}]}
        done = self.cached_call("all sites hooked, all computed", all_compute)
        if done is not None:
            self.fail_unless("all-compute bitwise equal to uncached", torch.equal(done[1], reference),
                             f"max abs difference {(done[1] - reference).abs().max().item():.3g}")

        planned = measured = full = 0
        branches: tuple[str, ...] = ()
        done = self.cached_call(f"config {config!r}", config, counter)
        if done is not None:
            plan = done[0].plan
            branches = plan.branches
            full = plan.num_steps * len(branches)
            per_branch = uncached_rows / full
            planned = sum(plan.action((s, "denoiser", b)).kind == COMPUTE for s in range(plan.num_steps) for b in branches)
            measured = counter.rows / per_branch
            self.fail_unless(f"calls into '{block.name}' follow the plan", measured == planned,
                             f"planned {planned} branch-evaluations, measured {measured:g} (uncached {full})")
        for kind in kinds:
            if kind not in self.cached:
                self.cached_call(f"reuse of '{kind}' sites", {"policy": [
                    {"type": "reuse", "sites": {"kinds": [kind]}, "interval": 2, "window": {"start": 0.3, "end": 1.0}}]})
        missing = [kind for kind in kinds if kind not in self.cached]
        self.fail_unless("every site kind reused or rebuilt", not missing, f"never cached: {', '.join(missing)}")

        for name, values in self._schedules():
            try:
                uncached = self.call(**{name: values})
            except ValueError:  # the pipeline refuses it uncached (Mochi, LTX: their own sigmas and timesteps=)
                continue
            done = self.cached_call(f"call with {name}=", config, **{name: values})
            if done is not None:
                self.fail_unless(f"call with {name}=: steps", done[0].plan.num_steps == len(values),
                                 f"planned {done[0].plan.num_steps} steps for {len(values)} {name}")
                self.fail_unless(f"call with {name}=: output shape", uncached.shape == done[1].shape,
                                 f"shape {tuple(done[1].shape)} instead of {tuple(uncached.shape)}")

        after = self.call()
        self.fail_unless("disable() restores bitwise", torch.equal(after, reference),
                         f"max abs difference {(after - reference).abs().max().item():.3g}")
        return AdapterCheck(adapter.name, self.steps, branches, dict(sorted(self.cached.items())), block.name, planned,
                            measured, full, tuple(self.checked), tuple(self.failures))

    def _schedules(self) -> list[tuple[str, list[float]]]:
        """``sigmas`` / ``timesteps`` for ``steps``, where both the pipeline and its scheduler take them."""
        takes = inspect.signature(type(self.pipe).__call__).parameters
        scheduler = self.pipe.scheduler
        accepts = inspect.signature(scheduler.set_timesteps).parameters
        found = []
        if "sigmas" in takes and "sigmas" in accepts:  # flow matching: from 1 down, one per step
            found.append(("sigmas", [1.0 - i / self.steps for i in range(self.steps)]))
        if "timesteps" in takes and "timesteps" in accepts:  # the scheduler's own, passed explicitly
            probe = copy.deepcopy(scheduler)
            probe.set_timesteps(self.steps)
            found.append(("timesteps", probe.timesteps.tolist()))
        return found


def _first_block(sites: list[Site]) -> Site:
    """The module whose calls show the denoiser's branch-evaluations: the first block site, else the
    first site the denoiser calls directly."""
    for site in sites[1:]:
        if site.kind == "block":
            return site
    return next(site for site in sites[1:] if site.parent == "denoiser")


class _BranchCounter:
    """Counts the rows (dim 0 of the first tensor input) entering the modules (one per expert) while active."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.modules, self.rows, self._handles = modules, 0, []

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        self.rows += first.shape[0] if first is not None else 1

    def __enter__(self) -> "_BranchCounter":
        self.rows = 0
        self._handles = [m.register_forward_pre_hook(self._count, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
