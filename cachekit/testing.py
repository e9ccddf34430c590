"""Kits for plugin authors: ``check_adapter`` runs a pipeline through what an adapter must get right."""

from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
from typing import Any, Callable

import attrs
import torch
from diffusers.utils import BaseOutput

from .adapter import Adapter, adapter_for
from .api import Session, disable, enable
from .config import ConfigLike
from .errors import CachekitError
from .policy import COMPUTE, ONLINE, SKIP, Action, Policy, RunInfo
from .sites import STACK, Selector, Site
from .values import BatchInputs, first_tensor, unpack


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
    #: The sites called with one CFG branch computing and the other reused in the same batched call
    #: (each both ways round) whose computed rows matched the uncached call; empty for a split layout.
    one_branch_sites: tuple[str, ...] = ()
    #: What the checks could not cover, and why.
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        lines = [f"check_adapter: adapter '{self.adapter}', {self.steps} steps, branches {', '.join(self.branches)}",
                 *(f"  ok    {name}" for name in self.checked if not any(f.startswith(name) for f in self.failures)),
                 *(f"  FAIL  {failure}" for failure in self.failures),
                 *(f"  note  {note}" for note in self.notes),
                 *([f"  one-branch calls at {len(self.one_branch_sites)} sites, each way round: the computed rows "
                    "equal the uncached call's"] if self.one_branch_sites else []),
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
    at least once; on a session's first call the first block is entered once per denoiser branch
    its runs compute (so CFG-Cache really skips the uncond branch, and measuring the costs makes no
    forward of its own; calls in no denoising step, such as a key/value cache prefill, count alike
    cached and uncached); a call with ``sigmas=`` / ``timesteps=`` runs where
    the pipeline takes them; ``disable()`` restores bitwise; ``call_order`` is right: nudging the
    cond output of the first step moves the next step's latents further than nudging the uncond
    output, as a guidance ``u + g (c - u)`` with ``g > 1/2`` does (the call must guide so). For a
    batched layout, every site below the denoiser computes one branch while the other is reused in
    the same call, each way round, and the computed rows must equal the uncached call's on the same inputs (``ONE_BRANCH_RTOL``); a
    failure names the site and the input cut or passed whole by mistake. Raises an AssertionError
    listing every failure (``raise_on_failure=False``: returns them in the result)."""
    pipe = build_pipeline()
    checker = _Checker(pipe, call_kwargs, steps, adapter)
    result = checker.run(config)
    if raise_on_failure and result.failures:
        raise AssertionError(f"check_adapter failed for adapter '{result.adapter}': " + "; ".join(result.failures))
    return result


#: The fields of a pipeline output that hold its latents.
_OUTPUT_FIELDS = ("frames", "images", "latents", "video")


def _latents(output: Any) -> torch.Tensor:
    """The latents a pipeline call returned: a tensor, a pipeline output's ``frames`` / ``images`` /
    ``latents`` / ``video`` (the last of a list of tensors: a sectioned sampler's latents after each
    section), or the first item of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    for name in _OUTPUT_FIELDS:
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
            return value[-1]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    fields = [f"{name} is a {type(getattr(output, name)).__name__}" for name in _OUTPUT_FIELDS
              if getattr(output, name, None) is not None]
    found = f"a {type(output).__name__}" + (f" whose {', '.join(fields)}" if fields else "")
    raise TypeError(f"the pipeline returned {found}, not latents; call_kwargs must ask for output_type='latent' "
                    "(a pipeline output holding a tensor, or a tensor)")


def _kwargs(call_kwargs: Callable[[Any, int], Any], pipe: Any, steps: int) -> dict[str, Any]:
    """``call_kwargs(pipe, steps)``, which must be the keyword arguments of a call, not its result."""
    kwargs = call_kwargs(pipe, steps)
    if not isinstance(kwargs, dict) or isinstance(kwargs, BaseOutput):  # a pipeline output is a dict too
        raise TypeError(f"call_kwargs(pipe, steps) returned a {type(kwargs).__name__}, not a dict; return the "
                        "keyword arguments of the pipeline call (check_adapter calls the pipeline itself)")
    return kwargs


class _Checker:
    def __init__(self, pipe: Any, call_kwargs: Callable[[Any, int], dict[str, Any]], steps: int, adapter: Any) -> None:
        self.pipe, self.call_kwargs, self.steps, self.adapter = pipe, call_kwargs, steps, adapter
        self.failures: list[str] = []
        self.checked: list[str] = []
        self.cached: dict[str, int] = {}
        self.notes: list[str] = []
        self.one_branch: list[str] = []
        #: Steps a run of ``steps`` makes (fewer where the pipeline starts mid-schedule, ``strength < 1``).
        self.run_steps = steps

    def fail_unless(self, name: str, passed: bool, detail: str) -> bool:
        self.checked.append(name)
        if not passed:
            self.failures.append(f"{name}: {detail}")
        return passed

    def call(self, steps: int | None = None, **overrides: Any) -> torch.Tensor:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", UserWarning)  # idle-policy notes of short runs
            return _latents(self.pipe(**{**_kwargs(self.call_kwargs, self.pipe, steps or self.steps), **overrides}))

    def cached_call(self, name: str, config: ConfigLike, counter: "RowCounter | None" = None,
                    **overrides: Any) -> tuple[Session, torch.Tensor] | None:
        """Run under ``config``; record whether the executed decisions equal the plan and are finite.
        With a ``counter``, the calls into the counted modules are counted on the session's first run,
        which is also the one that measures the model's costs (it may make no forward of its own)."""
        session = enable(self.pipe, config, adapter=self.adapter)
        reads = DeviceReads(self.pipe.transformer, session.adapter.is_step_call)
        try:
            if counter is not None:
                with counter, reads:
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
        if counter is not None and session.plan.is_static:
            loops = len(session.runtime.call_runs)
            allowed = READS_AFTER_FIRST_CALL + READS_PER_LATER_LOOP * (loops - 1)
            self.fail_unless(f"{name}: device reads", reads.count <= allowed,
                             f"cachekit read {reads.count} values from the device after the first of {reads.calls} "
                             f"denoiser calls in {loops} loop(s); a static plan reads at most {allowed} there "
                             "(host syncs per call on a GPU)")
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
        counter = RowCounter.for_adapter(adapter)
        with counter:
            reference = self.call()
        uncached_rows = counter.rows

        kinds = sorted({site.kind for site in sites})
        # every site hooked, every node computed (interval 1): bitwise the uncached output
        all_compute = {"policy": [{"type": "reuse", "label": "all-compute", "interval": 1, "sites": {"kinds": kinds}}]}
        done = self.cached_call("all sites hooked, all computed", all_compute)
        branches: tuple[str, ...] = ()
        if done is not None:
            branches = done[0].plan.branches
            self.fail_unless("all-compute bitwise equal to uncached", torch.equal(done[1], reference),
                             f"max abs difference {(done[1] - reference).abs().max().item():.3g}")

        planned = measured = full = 0
        done = self.cached_call(f"config {config!r}", config, counter)
        if done is not None:
            branches = done[0].plan.branches
            self.run_steps = done[0].plan.num_steps
            reports = done[0].reports()  # every loop of the call
            full = sum(report.num_steps * len(report.branches) for report in reports)
            planned = sum(kind == COMPUTE for report in reports
                          for (_, site, _), kind in report.executed.items() if site == "denoiser")
            measured = counter.rows / (uncached_rows / full)
            self.fail_unless(f"calls into '{block.name}' follow the plan", measured == planned,
                             f"planned {planned} branch-evaluations, measured {measured:g} (uncached {full})")
        for kind in kinds:
            if kind not in self.cached:
                self.cached_call(f"reuse of '{kind}' sites", {"policy": [
                    {"type": "reuse", "sites": {"kinds": [kind]}, "interval": 2, "window": {"start": 0.3, "end": 1.0}}]})
        missing = [kind for kind in kinds if kind not in self.cached]
        self.fail_unless("every site kind reused or rebuilt", not missing, f"never cached: {', '.join(missing)}")
        _OneBranchProbe(self, adapter, sites, branches).run()
        self._stack_probe(adapter, sites, branches)
        self._order_probe(adapter, sites[0], branches)

        per_step = len(adapter.step_calls(branches)) if branches else 1  # denoiser calls a step
        for name, values in self._schedules():
            calls = _CallCounter(adapter.modules(sites[0]), adapter.is_step_call)
            try:
                with calls:
                    uncached = self.call(**{name: values})
            except Exception as err:  # the pipeline refuses it uncached (Mochi, LTX: their own sigmas and timesteps=)
                self.notes.append(f"call with {name}=: not probed: the uncached call raised {type(err).__name__}: {err}")
                continue
            # the steps the uncached call made: fewer than its schedule where it starts mid-way (strength < 1)
            made = calls.calls // per_step
            done = self.cached_call(f"call with {name}=", config, **{name: values})
            if done is not None:
                steps_planned = sum(report.num_steps for report in done[0].reports())  # every loop of the call
                self.fail_unless(f"call with {name}=: steps", steps_planned == made,
                                 f"planned {steps_planned} steps for {len(values)} {name}, on which the uncached call "
                                 f"made {made}")
                self.fail_unless(f"call with {name}=: output shape", uncached.shape == done[1].shape,
                                 f"shape {tuple(done[1].shape)} instead of {tuple(uncached.shape)}")

        after = self.call()
        self.fail_unless("disable() restores bitwise", torch.equal(after, reference),
                         f"max abs difference {(after - reference).abs().max().item():.3g}")
        return AdapterCheck(adapter.name, self.steps, branches, dict(sorted(self.cached.items())), block.name, planned,
                            measured, full, tuple(self.checked), tuple(self.failures), tuple(self.one_branch),
                            tuple(self.notes))

    def _stack_probe(self, adapter: Adapter, sites: list[Site], branches: tuple[str, ...]) -> None:
        """The block stack, skipped on the very inputs it just computed on, must give that output again:
        its blocks hand their inputs through and the last adds the residual, so anything the model
        does to the hidden states between the stack's blocks shows here. Two identical calls of the
        bare model: the first computes the stack, the second reuses its residual."""
        if not any(site.kind == STACK for site in sites):
            self.notes.append(f"{STACK_NAME}: no block stack (the adapter's stack_blocks() is empty)")
            return
        model, captured = self.pipe.transformer, []

        def capture(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if not captured:
                captured.append((args, kwargs))

        handle = model.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.call(steps=2)
        finally:
            handle.remove()
        args, kwargs = captured[0]
        first = adapter.step_calls(branches)[0][1] if branches else ("cond",)  # what the captured call carries
        cfg = first if len(first) > 1 else False
        config = {"policy": [{"type": "reuse", "sites": {"kinds": [STACK]}, "interval": 2}]}
        with torch.no_grad():
            enable(model, config, num_inference_steps=2, cfg=cfg, adapter=self.adapter)
            try:
                first = unpack(model(*args, **kwargs))[0][0]
                second = unpack(model(*args, **kwargs))[0][0]
            except Exception as err:
                self.fail_unless(STACK_NAME, False, f"the stack raised {type(err).__name__}: {_first_line(err)}")
                return
            finally:
                disable(model)
        tolerance = ONE_BRANCH_RTOL.get(first.dtype, 1e-5) * float(first.abs().max())
        self.fail_unless(STACK_NAME, bool((second - first).abs().max() <= tolerance),
                         f"skipped on the inputs it computed on, the stack gives outputs off by "
                         f"{(second - first).abs().max().item():.3g}: the model changes the hidden states between "
                         "its blocks; override the adapter's stack_blocks()")

    def _order_probe(self, adapter: Adapter, denoiser: Site, branches: tuple[str, ...]) -> None:
        """The branch the adapter calls ``cond`` must steer the run more than ``uncond``: the
        pipeline's guidance ``u + g (c - u)`` moves the guided output by g times a nudge of the cond
        output and by (1 - g) times the same nudge of the uncond output, so with g > 1/2 cond's moves
        it further, and the latents the scheduler makes from it alike (its step is linear in it).
        Each branch's output at the first step (its part of the batch, or its call) is nudged in
        turn and the latents entering the second step are compared. A wrong ``call_order`` swaps them."""
        order = tuple(b for b in adapter.call_order if b in branches)
        if len(order) < 2:
            self.notes.append(f"{CALL_ORDER}: not probed: the checked call ran one branch")
            return
        if not {"uncond", "cond"} <= set(order):
            self.notes.append(f"{CALL_ORDER}: not probed: the checked call ran no uncond branch")
            return
        calls = [group for _, group in adapter.step_calls(branches)]
        modules = adapter.modules(denoiser)
        reference = self._second_step_input(modules, len(calls), adapter)
        if reference is None:
            self.notes.append(f"{CALL_ORDER}: not probed: the checked call has no second step")
            return
        moved = {}
        for branch in ("uncond", "cond"):  # (call, place along its batch, branches it carries)
            call = next(k for k, group in enumerate(calls) if branch in group)
            nudge = (call, calls[call].index(branch), len(calls[call]))
            moved[branch] = float((self._second_step_input(modules, len(calls), adapter, nudge) - reference).norm())
        if moved["uncond"] == moved["cond"] == 0:
            self.notes.append(f"{CALL_ORDER}: not probed: the first step's outputs do not move the next step's "
                              "latents (the guidance zeroes the first steps' prediction, as CFG-Zero* does)")
            return
        together = any({"uncond", "cond"} <= set(group) for group in calls)
        if together and adapter.call_groups:
            fix = "swap 'uncond' and 'cond' in call_groups and call_order (the order along the batch)"
        else:
            fix = f"set call_order = {tuple(reversed(order))} (the order {'along the batch' if together else 'called'})"
        self.fail_unless(CALL_ORDER, moved["cond"] > moved["uncond"],
                         f"nudging the output the adapter calls 'uncond' moves the next step's latents "
                         f"{moved['uncond']:.3g}, 'cond' {moved['cond']:.3g}: under guidance > 1/2 cond moves them "
                         f"further, so the branches lie the other way round; {fix}")

    def _second_step_input(self, modules: list[torch.nn.Module], per_step: int, adapter: Adapter,
                           nudge: tuple[int, int, int] | None = None) -> torch.Tensor | None:
        """The latents input (``adapter.latent_input``) of the denoiser's first call at the second step
        (its ``per_step``-th step call from 0, calls that are no step left out; the run stops there),
        None if there is none. ``nudge = (call, index, parts)``:
        the ``index``-th of ``parts`` chunks (along dim 0) of the output of the ``call``-th call is
        moved by a fixed random tensor ``NUDGE`` times the output's largest value."""
        calls, seen = [0], []

        def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if calls[0] == per_step and adapter.is_step_call(args, kwargs):
                seen.append(first_tensor(args, kwargs, adapter.latent_input))
                raise _Stop

        def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if not adapter.is_step_call(args, kwargs):
                return None
            calls[0] += 1
            if nudge is None or calls[0] - 1 != nudge[0]:
                return None
            _, index, parts = nudge
            tensors, rebuild = unpack(output)
            chunks = list(tensors[0].chunk(parts))
            noise = torch.randn(chunks[index].shape, generator=torch.Generator().manual_seed(0))
            chunks[index] = chunks[index] + NUDGE * tensors[0].abs().max() * noise.to(chunks[index])
            return rebuild((torch.cat(chunks), *tensors[1:]))

        handles = [h for m in modules for h in (m.register_forward_pre_hook(before, with_kwargs=True),
                                                m.register_forward_hook(after, with_kwargs=True))]
        try:
            with contextlib.suppress(_Stop):  # the probe stops the run once it has read what it needs
                self.call()
        finally:
            for handle in handles:
                handle.remove()
        return seen[0] if seen else None

    def _schedules(self) -> list[tuple[str, list[float]]]:
        """``sigmas`` / ``timesteps`` for ``steps``, where both the pipeline (a modular one: its blocks'
        inputs) and its scheduler take them."""
        blocks = getattr(self.pipe, "blocks", None)
        takes = ({param.name for param in blocks.inputs} if hasattr(blocks, "inputs")
                 else inspect.signature(type(self.pipe).__call__).parameters)
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


ONE_BRANCH = "one-branch calls"
CALL_ORDER = "call order: the cond branch steers the run"
#: The nudge of a denoiser output, relative to its largest value.
NUDGE = 1e-3
STACK_NAME = "block stack skipped on its own inputs"

#: Relative tolerance (of the largest value) of the rows a branch computes alone against the same
#: rows of the uncached call with every branch, by dtype. The rows of a batch never interact in a
#: transformer, but a kernel's blocking, and so its rounding, may depend on the number of rows: on
#: the tiny test models the difference is at most 3e-7 in float32 (two ulps; most sites are
#: bitwise equal), and the bound leaves room for the longer sums of real models. An input cut
#: wrongly or passed whole changes the rows by the order of the values themselves, or their shape.
ONE_BRANCH_RTOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@attrs.frozen(kw_only=True)
class _ReuseAt(Policy):
    """Reuse the nodes ``points`` (step, site name, branch) from the latest output computed on their
    branch; every other node computes."""

    type_name = "check-one-branch"
    points: frozenset = frozenset()

    def plan_site(self, site: Site, branch: str, steps: Any, run: RunInfo) -> dict[int, Action]:
        return {step: Action.reuse() for step in steps if (step, site.name, branch) in self.points}


class _OneBranchProbe:
    """For a call that carries several branches (a batched layout, or a split layout's call group):
    every site (below the denoiser) is called with one of the call's branches reused and the others
    computing in the same call, each branch in turn, and the computing branches' rows of its output
    must be those the uncached call of the same inputs gives (``ONE_BRANCH_RTOL``). Sites at depth d
    (children of the denoiser: 1) are probed at step k D + d reusing the k-th branch along the batch,
    D the deepest; everything else computes, so each probed call carries all of the call's branches,
    and one run of m D + 1 steps probes every site (m branches in the call: 2 for [uncond, cond]).

    A call that raises or gives other rows is named with the input to blame where one is found:
    each input the rule passed whole is cut, each input it cut is passed whole, and the one change
    that gives the uncached rows is reported. The run then goes on without that site."""

    def __init__(self, checker: "_Checker", adapter: Adapter, sites: list[Site], branches: tuple[str, ...] = ()) -> None:
        self.checker, self.adapter, self.sites = checker, adapter, sites
        depth: dict[str, int] = {}
        for site in sites:
            depth[site.name] = 0 if site.parent is None else depth[site.parent] + 1
        self.depth = depth
        self.deepest = max(depth.values())
        # the first call of a step that carries several of the run's branches (batched: every branch)
        calls = adapter.step_calls(branches or tuple(adapter.call_order))
        self.order = next((group for _, group in calls if len(group) > 1), ())
        self.matched: set[tuple[str, str]] = set()
        self.failed: set[str] = set()

    def run(self) -> None:
        checker, probed = self.checker, [site for site in self.sites[1:]]
        if not self.order:
            checker.notes.append(f"{ONE_BRANCH}: not probed: the split layout calls the model once per branch, so no "
                                 "site call carries two branches and no input is cut")
            return
        if not probed:
            checker.notes.append(f"{ONE_BRANCH}: not probed: the adapter has no site below the denoiser")
            return
        checker.checked.append(ONE_BRANCH)
        pending = [site.name for site in probed]
        for _ in range(len(probed)):  # each failing run takes its site out
            pending = [name for name in pending if name not in self.failed]
            if not pending or not self._run(pending):
                break
        for site in probed:
            if site.name in self.failed:
                continue
            missing = [b for b in self.order if (site.name, b) not in self.matched]
            if missing:
                checker.failures.append(f"{ONE_BRANCH}: site '{site.name}' was never called with {' nor '.join(missing)} "
                                        "computing alone beside a reused branch (is it called once per denoiser call?)")
            else:
                checker.one_branch.append(site.name)

    def _computed(self, reused: str) -> list[str]:
        """The branches of the probed call that compute while ``reused`` is reused."""
        return [b for b in self.order if b != reused]

    def _run(self, names: list[str]) -> bool:
        """One run probing ``names``; True when it raised at a probed call (whose site failed)."""
        points = {}
        for k, reused in enumerate(self.order):
            for name in names:
                points[(k * self.deepest + self.depth[name], name)] = reused
        policy = _ReuseAt(sites=Selector(names=tuple(names)),
                          points=frozenset((step, name, b) for (step, name), b in points.items()))
        checker = self.checker
        session = enable(checker.pipe, policy, adapter=checker.adapter)
        runtime, inflight, handles = session.runtime, [], []
        by_name = {site.name: site for site in self.sites}

        def before(site: Site) -> Callable:
            def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
                run = runtime.run
                if run is not None and set(self.order) <= set(run.present) and (run.step, site.name) in points:
                    present = [b for b in self.order if b in run.present]
                    inflight.append((site, run.step, points[(run.step, site.name)], present, module, args, kwargs))
            return hook

        def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if inflight and inflight[-1][4] is module:
                self._check(runtime, *inflight.pop(), output=output)

        for name in names:
            for module in session.adapter.modules(by_name[name]):
                handles += [module.register_forward_pre_hook(before(by_name[name]), with_kwargs=True),
                            module.register_forward_hook(after, with_kwargs=True)]
        try:
            # a run of m D + 1 steps; asked for more where the pipeline starts mid-schedule (strength < 1)
            wanted = len(self.order) * self.deepest + 1
            checker.call(steps=max(wanted, -(-wanted * checker.steps // max(checker.run_steps, 1))))
        except Exception as err:  # a failure to report, not to crash the kit on
            if not inflight:
                checker.failures.append(f"{ONE_BRANCH}: the run raised {type(err).__name__}: {_first_line(err)}")
                return False
            self._check(runtime, *inflight.pop(), error=err)
            return True
        finally:
            for handle in handles:
                handle.remove()
            disable(checker.pipe)
        return False

    def _check(self, runtime: Any, site: Site, step: int, reused: str, present: list[str], module: torch.nn.Module,
               args: tuple, kwargs: dict, output: Any = None, error: Exception | None = None) -> None:
        n = len(present)
        with runtime.suspended(), torch.no_grad():
            want = unpack(module.forward(*args, **kwargs))[0]
        for computed in self._computed(reused):
            index = present.index(computed)
            problem = (f"the call raised {type(error).__name__}: {_first_line(error)}" if error is not None
                       else _compare(unpack(output)[0], want, n, index, computed))
            if problem is not None:
                break
            self.matched.add((site.name, computed))
        else:
            return
        self.failed.add(site.name)
        blame = self._blame(runtime, site, module, args, kwargs, n, index, want)
        self.checker.failures.append(
            f"{ONE_BRANCH}: site '{site.name}' at step {step}, {computed} computing while {reused} is reused in the "
            f"same call: {problem}" + (f"; {blame}" if blame else "; no single input to blame was found"))

    def _blame(self, runtime: Any, site: Site, module: torch.nn.Module, args: tuple, kwargs: dict, n: int,
               index: int, want: tuple) -> str | None:
        """The input whose cut (or not) gives the uncached rows, and what to declare."""
        rule = self.adapter.batch_inputs_of(site)

        def rows_match(carry: frozenset, shared: frozenset) -> bool:
            trial = BatchInputs(rule.where, rule.params, carry, shared, rule.axes)
            try:
                with warnings.catch_warnings(), runtime.suspended(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    trial_args, trial_kwargs = _cut(trial, args, kwargs, n, index)
                    got = unpack(module.forward(*trial_args, **trial_kwargs))[0]
            except Exception:
                return False
            return len(got) == len(want) and all(
                g.shape == w.chunk(n)[index].shape and _close(g, w.chunk(n)[index]) for g, w in zip(got, want))

        named = _named_inputs(rule.params, args, kwargs)
        first = next(name for name, value in named if isinstance(value, torch.Tensor))
        batch = dict(named)[first].shape[0]
        cut_args, cut_kwargs = _cut(rule, args, kwargs, n, index)
        after = dict(_named_inputs(rule.params, cut_args, cut_kwargs))
        whole, cut = [], []
        for name, value in named:
            tensors = [t for t in _tensors_in(value) if t.dim() and t.shape[0] % n == 0]
            if name == first or not tensors:
                continue
            same = {id(t) for t in _tensors_in(after[name])}
            (whole if all(id(t) in same for t in tensors) else cut).append((name, tensors[0].shape[0]))
        for name, rows in whole:
            if rows_match(rule.carry | {name}, rule.shared - {name}):
                declared = "it is declared shared (shared_kwargs / Site.shared_inputs): remove it there" \
                    if name in rule.shared else "declare it in the adapter's batch_kwargs or the site's batch_inputs"
                return (f"input '{name}' ({rows} rows along dim 0 for a batch of {batch}) carries the CFG branches but "
                        f"was passed whole; cut, it gives the uncached rows: {declared}")
        for name, rows in cut:
            if rows_match(rule.carry - {name}, rule.shared | {name}):
                return (f"input '{name}' ({rows} rows along dim 0) is shared by the CFG branches but was cut; passed "
                        "whole, it gives the uncached rows: declare it in the adapter's shared_kwargs or the site's "
                        "shared_inputs")
        names = {name for name, _ in whole}
        if len(names) > 1 and rows_match(rule.carry | names, rule.shared - names):
            return (f"inputs {', '.join(repr(n) for n in sorted(names))} carry the CFG branches but were passed whole; "
                    "cut, they give the uncached rows")
        return None


def _cut(rule: BatchInputs, args: tuple, kwargs: dict, n: int, index: int) -> tuple[tuple, dict]:
    return rule.select(args, kwargs, n, [index])


def _named_inputs(params: tuple[str, ...], args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    return [(params[i] if i < len(params) else f"argument {i}", a) for i, a in enumerate(args)] + list(kwargs.items())


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_in(v)]
    return []


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    rtol = ONE_BRANCH_RTOL.get(want.dtype, 1e-4)
    scale = want.abs().max().item() if want.numel() else 0.0
    return bool((got - want).abs().max() <= rtol * max(scale, 1e-30)) if want.numel() else True


def _compare(got: tuple, want: tuple, n: int, index: int, branch: str) -> str | None:
    """What is wrong with the ``index``-th of ``n`` row chunks of ``got`` against ``want``'s, or None."""
    if len(got) != len(want):
        return f"it returned {len(got)} tensors, the uncached call {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape:
            return f"output {k} has shape {tuple(g.shape)}, the uncached call's {tuple(w.shape)}"
        rows, expected = g.chunk(n)[index], w.chunk(n)[index]
        if not _close(rows, expected):
            diff = (rows - expected).abs().max().item()
            return (f"output {k}'s {branch} rows differ from the uncached call's by {diff:.3g} (largest value "
                    f"{expected.abs().max().item():.3g}, tolerance {ONE_BRANCH_RTOL.get(w.dtype, 1e-4):g} of it)")
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""


def _first_block(sites: list[Site]) -> Site:
    """The module whose calls show the denoiser's branch-evaluations: the first block site, else the
    first site the denoiser calls directly."""
    for site in sites[1:]:
        if site.kind == "block":
            return site
    return next(site for site in sites[1:] if site.parent == "denoiser")


class _Stop(Exception):
    """Ends a probing pipeline call once the probe has what it needs."""


class _CallCounter:
    """Counts the calls into the denoiser ``modules`` (one per expert) that are steps (``is_step``) while active."""

    def __init__(self, modules: list[torch.nn.Module], is_step: Callable[[tuple, dict], bool]) -> None:
        self.modules, self.is_step, self.calls, self._handles = modules, is_step, 0, []

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls += self.is_step(args, kwargs)

    def __enter__(self) -> "_CallCounter":
        self.calls = 0
        self._handles = [m.register_forward_pre_hook(self._count, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()


#: The values a run of a static plan may read from the device after its first denoiser call, however
#: long: the timesteps placed by position, all at once when it ends. A pipeline call that runs several
#: loops adds, per later loop, the reads of its start (its schedule, its first timestep) and its end.
READS_AFTER_FIRST_CALL = 1
READS_PER_LATER_LOOP = 3
_READS = (torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__bool__,
          torch.Tensor.__index__, torch.Tensor.tolist)


class DeviceReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor-to-Python conversions (host syncs on an accelerator) that cachekit's own code
    makes while active (the pipeline's and the model's are theirs), from the second call of
    ``model`` on (every call, without a model): the first call of a run may read what it needs to
    place the run (its schedule, its timestep, an adapter's token grid). ``is_step(args, kwargs)``:
    which calls of ``model`` count as calls (an adapter's ``is_step_call``; default all)."""

    def __init__(self, model: torch.nn.Module | None = None, is_step: Callable[[tuple, dict], bool] | None = None) -> None:
        super().__init__()
        self.count, self.calls, self.model, self.is_step, self._handle = 0, 0, model, is_step, None

    def _called(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls += self.is_step is None or self.is_step(args, kwargs)

    def __enter__(self) -> "DeviceReads":
        if self.model is not None:
            self._handle = self.model.register_forward_pre_hook(self._called, with_kwargs=True)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
        super().__exit__(*exc)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _READS and (self.model is None or self.calls >= 2):
            frame = inspect.currentframe().f_back
            while frame is not None and frame.f_globals.get("__name__", "").startswith("torch"):
                frame = frame.f_back
            module = frame.f_globals.get("__name__", "") if frame is not None else ""
            if module.startswith("cachekit.") and module != __name__:
                self.count += 1
        return func(*args, **(kwargs or {}))


class RowCounter:
    """Counts the rows (dim 0 of the first tensor input) entering the modules (one per expert) while
    active. ``by_rows=False``: one per call (a model called once per branch, whose dim 0 is no
    batch). ``steps = (denoisers, is_step)``: only inside the denoiser calls that are steps."""

    def __init__(self, modules: list[torch.nn.Module], by_rows: bool = True,
                 steps: tuple[list[torch.nn.Module], Callable[[tuple, dict], bool]] | None = None) -> None:
        self.modules, self.by_rows, self.steps, self.rows, self._handles = modules, by_rows, steps, 0, []
        self._in_step = True

    @classmethod
    def for_adapter(cls, adapter: Adapter) -> "RowCounter":
        """The branch evaluations entering the first block of ``adapter``'s model in its denoising
        steps: rows where a call carries several branches along dim 0 (batched, or call groups), else
        calls."""
        sites = adapter.sites()
        return cls(adapter.modules(_first_block(sites)), adapter.cfg_layout == "batched" or adapter.call_groups is not None,
                   (adapter.modules(sites[0]), adapter.is_step_call))

    def _step(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._in_step = self.steps[1](args, kwargs)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not self._in_step:
            return
        first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        self.rows += first.shape[0] if first is not None and self.by_rows else 1

    def __enter__(self) -> "RowCounter":
        self.rows, self._in_step = 0, True
        self._handles = [m.register_forward_pre_hook(self._count, with_kwargs=True) for m in self.modules]
        if self.steps is not None:
            self._handles += [m.register_forward_pre_hook(self._step, with_kwargs=True) for m in self.steps[0]]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()


class GraphCounter:
    """A ``torch.compile`` backend that counts what dynamo hands it: each graph (its node count) and the
    recompiles among them (a graph of a frame dynamo had compiled before, after a guard failed).
    ``backend``: the backend that compiles each graph (default: run the traced graph as it is).
    Use it as ``torch.compile(module, backend=counter)``."""

    def __init__(self, backend: Callable[..., Callable] | None = None) -> None:
        self.backend = backend
        self.nodes: list[int] = []
        self.recompiles = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        self.nodes.append(len(graph.graph.nodes))
        compile_id = torch._guards.CompileContext.current_compile_id()
        self.recompiles += compile_id is not None and compile_id.frame_compile_id > 0
        return self.backend(graph, example_inputs) if self.backend is not None else graph.forward

    @property
    def graphs(self) -> int:
        return len(self.nodes)
