"""The planner: turns (run, sites, policies) into a validated StepPlan.

Composition rule: each policy states what it wants at the nodes (step, site, branch) its selector,
window and branches cover. Where two policies claim the same node, the one with the higher
``priority`` wins; equal priorities are an error naming both and the node. Unclaimed nodes
compute. A node whose enclosing site (its parent) is not computed becomes ``skip``: the call never
happens. Sites are planned parents first, and a policy is shown only the steps of its window where
the site is called on that branch.

Then the planner, not the policy, binds each want's sources (its ``refs``) to the outputs that are
really computed, step by step: "reuse the latest computed output", "rebuild from the two latest
computed outputs". A want whose sources do not exist (nothing computed yet on that branch) computes
instead, so no policy assumes what ran before its window (an online want rebuilding from several
outputs where only some are computed yet decides with those, see ``_Binder._ring``). The plan holds the denoiser and the
sites some policy selects; the rest always compute and are not hooked.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import attrs
import networkx as nx

from .errors import PlanError
from .policy import COMPUTE, ONLINE, REUSE, SKIP, Action, NodeKey, Policy, Ref, RunInfo
from .plan import PRODUCERS, StepPlan
from .sites import STACK, Site, narrow_stack

Claims = dict[NodeKey, tuple[Action, Policy]]


def build_plan(
    policies: Sequence[Policy],
    sites: Sequence[Site],
    branches: Sequence[str],
    num_steps: int,
    timesteps: Sequence[float] | None = None,
    cfg_layout: str = "batched",
    calls: Sequence[Sequence[str]] | None = None,
) -> StepPlan:
    """The plan of a run of ``policies`` over any of a model's ``sites`` (those no policy selects
    are left out). ``calls``: the branches each denoiser call of a step carries, in call order
    (None: from ``cfg_layout``, one call carrying every branch or one call per branch)."""
    check_selections(policies, sites)
    return plan_run(policies, planned_sites(sites, policies), branches, num_steps, timesteps, cfg_layout, calls)


def prepare_sites(sites: Sequence[Site], policies: Sequence[Policy]) -> list[Site]:
    """The sites every run of ``policies`` plans, from an adapter's validated ``sites``: the block
    stack narrowed to what the policies keep computed at its ends, each policy checked to select a
    site it can act on, the sites no policy selects left out. Done once per enable."""
    sites = resolve_stack(sites, policies)
    check_selections(policies, sites)
    return planned_sites(sites, policies)


def plan_run(
    policies: Sequence[Policy],
    sites: Sequence[Site],
    branches: Sequence[str],
    num_steps: int,
    timesteps: Sequence[float] | None = None,
    cfg_layout: str = "batched",
    calls: Sequence[Sequence[str]] | None = None,
) -> StepPlan:
    """The plan of one run over ``sites`` as ``prepare_sites`` returns them."""
    if num_steps < 1:
        raise PlanError(f"a run needs at least one step, got num_steps={num_steps}")
    if timesteps is not None and len(timesteps) != num_steps:
        raise PlanError(f"{len(timesteps)} timesteps given for a {num_steps}-step run")
    groups = tuple(tuple(group) for group in calls) if calls is not None else None
    if groups is not None and sorted(b for group in groups for b in group) != sorted(branches):
        raise PlanError(f"the calls {groups} do not carry the run's branches {tuple(branches)} once each")
    run = RunInfo(num_steps, tuple(timesteps) if timesteps is not None else None, tuple(branches), cfg_layout, groups)
    final: dict[NodeKey, Action] = {}
    for site in sites:  # parents come first, so a site's policies see where it is called
        _Binder(site, run, _claims(site, policies, run, final), final).bind_all()
    deciding = {action.policy for action in final.values() if action.kind == ONLINE}
    deciding |= {p.name for p in policies if p.records}
    for node, action in final.items():
        if action.kind == REUSE and action.sources:  # an explicit reuse of a reuse reads the original producer
            final[node] = attrs.evolve(action, sources=(_producer(final, action.sources[0]),))
        elif action.observe and action.policy not in deciding:  # observed for no decision: nothing to measure
            final[node] = attrs.evolve(action, observe=False)
    graph = nx.DiGraph()
    graph.add_nodes_from((node, {"action": action}) for node, action in final.items())
    graph.add_edges_from((src, node) for node, action in final.items() for src in action.sources if src in final)
    plan = StepPlan(graph, sites, branches, num_steps, timesteps, groups)
    plan.validate()
    return plan


def _producer(final: dict[NodeKey, Action], node: NodeKey) -> NodeKey:
    """The node whose output ``node`` holds: itself, or the producer a chain of reuses reads."""
    while node in final and final[node].kind == REUSE and final[node].sources:
        node = final[node].sources[0]
    return node


class _Binder:
    """Decides one site's nodes step by step, binding each want to what was really computed."""

    def __init__(self, site: Site, run: RunInfo, claims: Claims, final: dict[NodeKey, Action]) -> None:
        self.site, self.run, self.claims, self.final = site, run, claims, final
        self.computed: dict[str, list[int]] = {b: [] for b in run.branches}

    def bind_all(self) -> None:
        site, final = self.site, self.final
        for step in range(self.run.num_steps):
            called = [b for b in self.run.branches
                      if site.parent is None or final[(step, site.parent, b)].kind == COMPUTE]
            for branch in self.run.branches:
                if branch not in called:
                    final[(step, site.name, branch)] = Action(SKIP)
            same_step = []
            for branch in called:  # wants reading an earlier step first: same-step readers see them
                want = self.claims.get((step, site.name, branch), (Action(COMPUTE), None))
                if any(ref.back == 0 for ref in want[0].refs):
                    same_step.append(branch)
                else:
                    final[(step, site.name, branch)] = self._bind(step, branch, *want)
            self._guard(step, called)
            for branch in same_step:
                final[(step, site.name, branch)] = self._bind(step, branch, *self.claims[(step, site.name, branch)])
            if site.kind == STACK:  # the branches of one call run the stack's blocks together
                for group in self.run.call_groups():
                    if len(group) > 1:
                        self._together(step, [b for b in called if b in group])
            for branch in called:
                if final[(step, site.name, branch)].kind == COMPUTE:
                    self.computed[branch].append(step)

    def _bind(self, step: int, branch: str, want: Action, policy: Policy | None) -> Action:
        if not want.refs:
            return want
        node, sources = (step, self.site.name, branch), []
        ring = self._ring(step, branch, want)
        for ref in want.refs if ring is None else ():
            source = self._resolve(step, ref.branch or branch, ref, sources)
            if source is None:  # nothing computed to read: compute instead (an online want observes it)
                return Action(COMPUTE, policy=want.policy, observe=want.kind == ONLINE)
            sources.append(source)
        action = attrs.evolve(want, sources=tuple(sources) if ring is None else ring, refs=())
        if policy is None:
            return action
        with _naming(policy, self.site):
            return policy.bound(node, action, self.run)

    def _ring(self, step: int, branch: str, want: Action) -> tuple[NodeKey, ...] | None:
        """An online want rebuilding from the ``k`` latest outputs of its branch where fewer are computed
        by plan (at least one): the slots its runtime history shifts through (oldest first) are the
        online nodes that follow the latest computed step, up to this one, then the computed outputs.
        They fill as those nodes compute. None: bind the refs as they are."""
        refs, history = want.refs, self.computed.get(branch, [])
        if (want.kind != ONLINE or len(refs) < 2 or not history or len(history) >= len(refs)
                or any(r.branch is not None or r.at is not None for r in refs)
                or [r.back for r in refs] != list(range(len(refs), 0, -1))):
            return None
        slots = range(history[-1] + 1, history[-1] + 1 + len(refs) - len(history))
        if slots[-1] > step or any(self.final[(s, self.site.name, branch)].kind != ONLINE for s in slots if s < step):
            return None
        return tuple((s, self.site.name, branch) for s in (*slots, *history))

    def _resolve(self, step: int, branch: str, ref: Ref, bound: list[NodeKey]) -> NodeKey | None:
        if branch not in self.computed:
            return None
        if ref.at is not None:
            if not 0 <= ref.at < len(bound):
                return None
            source = _producer(self.final, (bound[ref.at][0], self.site.name, branch))
        elif ref.back == 0:
            source = _producer(self.final, (step, self.site.name, branch))
            if source[0] == step and (source not in self.final or self.final[source].kind != COMPUTE):
                return None  # a same-step source must be computed earlier in the call
        else:
            history = self.computed[branch]
            if len(history) < ref.back:
                return None
            return (history[-ref.back], self.site.name, branch)
        return source if source in self.final and self.final[source].kind in PRODUCERS else None

    def _together(self, step: int, called: list[str]) -> None:
        """The blocks of a batched call run for every branch it carries or for none: where some branch
        of the stack computes, every branch does."""
        nodes = [(step, self.site.name, b) for b in called]
        if any(self.final[n].kind == COMPUTE for n in nodes):
            for node in nodes:
                action = self.final[node]
                if action.kind != COMPUTE:
                    self.final[node] = Action(COMPUTE, policy=action.policy, observe=action.kind == ONLINE)

    def _guard(self, step: int, called: list[str]) -> None:
        """A guarded want rebuilds only where every called branch last computed at one step."""
        nodes = [(step, self.site.name, b) for b in called]
        guarded = [n for n in nodes if n in self.final and self.final[n].guard and self.final[n].kind != COMPUTE]
        latest = {self.computed[b][-1] if self.computed[b] else None for b in called}
        if guarded and len(latest) > 1:
            for node in guarded:
                self.final[node] = Action(COMPUTE, policy=self.final[node].policy)


@contextlib.contextmanager
def _naming(policy: Policy, site: Site) -> Iterator[None]:
    """A PlanError raised while a policy plans a site names the policy and the site."""
    try:
        yield
    except PlanError as error:
        if str(error).startswith(f"policy '{policy.name}'"):
            raise
        raise PlanError(f"policy '{policy.name}' at {site.name}: {error}") from None


def _claims(site: Site, policies: Sequence[Policy], run: RunInfo, final: dict[NodeKey, Action]) -> Claims:
    """Each policy's wants for ``site``, given the steps its window holds where the site is called."""
    claims: Claims = {}
    for policy in policies:
        if not policy.sites.matches(site):
            continue
        with _naming(policy, site):
            window = policy.steps(site, run)  # may be empty for a short run: the run warns
        for branch in policy.branches(run.branches):
            called = [s for s in window if site.parent is None or final[(s, site.parent, branch)].kind == COMPUTE]
            if not called:  # nothing to claim; a policy idle for the whole run is named when it ends
                continue
            with _naming(policy, site):
                planned = policy.plan_site(site, branch, called, run)
            stray = sorted(set(planned) - set(called))
            if stray:
                raise PlanError(f"policy '{policy.name}' planned {site.name} [{branch}] at steps {stray[:5]}, outside "
                                "the steps it was given (its window, where the site is called)")
            for step, action in planned.items():
                node = (step, site.name, branch)
                action = attrs.evolve(action, policy=policy.name)
                _check_derived(policy, site, branch, action)
                held = claims.get(node)
                if held is not None:
                    other = held[1]
                    if other.priority == policy.priority:
                        raise PlanError(
                            f"policies '{other.name}' and '{policy.name}' both claim node {node} at priority "
                            f"{policy.priority}; give the one that should win a higher 'priority', or narrow a selector or window"
                        )
                    if other.priority > policy.priority:
                        continue
                claims[node] = (action, policy)
    return claims


def _check_derived(policy: Policy, site: Site, branch: str, action: Action) -> None:
    """The branch rule: a want reads its own branch, or a branch its policy declares as a source of this
    one (``Policy.derives_from``)."""
    read = {ref.branch for ref in action.refs if ref.branch is not None} | {src[2] for src in action.sources}
    for other in sorted(read - {branch}):
        allowed = policy.derives_from(branch)
        if other not in allowed:
            declared = ", ".join(map(repr, allowed)) or "none"
            raise PlanError(
                f"policy '{policy.name}' at {site.name} [{branch}] reads the '{other}' branch, but a branch is "
                f"built from its own outputs unless its policy declares the source (Policy.derives_from: "
                f"'{policy.name}' declares {declared} for '{branch}'); read '{branch}' itself, or declare "
                f"'{other}' in derives_from")


def check_selections(policies: Sequence[Policy], sites: Sequence[Site]) -> None:
    """Every policy must select at least one site it can act on: a policy that matches nothing is an
    error, not a no-op."""
    for policy in policies:
        for site in policy.sites.select(sites):
            policy.check_site(site)
        if not policy.sites.select(sites):
            kinds = sorted({s.kind for s in sites})
            blocks = sorted({s.block for s in sites if s.block is not None})
            raise PlanError(
                f"policy '{policy.name}' selects no site ({policy.sites}); this model has site kinds "
                f"{', '.join(kinds)} and blocks {blocks[0] if blocks else '-'}..{blocks[-1] if blocks else '-'}"
            )


def resolve_stack(sites: Sequence[Site], policies: Sequence[Policy]) -> list[Site]:
    """``sites`` with the block stack narrowed to what the policies acting on it keep computed at its
    ends (``Policy.stack_bounds``); those policies must agree."""
    stack = next((s for s in sites if s.kind == STACK), None)
    if stack is None:
        return list(sites)
    claims = {p.name: p.stack_bounds() for p in policies if p.sites.matches(stack)}
    bounds = {b for b in claims.values() if b is not None}
    if len(bounds) > 1:
        raise PlanError("policies on the block stack keep different blocks computed at its ends: "
                        + ", ".join(f"'{name}' {b}" for name, b in claims.items() if b is not None)
                        + "; give them the same first/last block counts")
    first, last = bounds.pop() if bounds else (0, 0)
    if first is None:
        first = 0 if stack.head else 1
    try:
        return narrow_stack(list(sites), first, last)
    except ValueError as error:
        raise PlanError(f"{error}; lower the first/last block counts") from None


def planned_sites(sites: Sequence[Site], policies: Sequence[Policy]) -> list[Site]:
    """The denoiser and every site some policy selects, each re-parented to its nearest planned ancestor."""
    by_name = {s.name: s for s in sites}
    kept = [s for s in sites if s.kind == "denoiser" or any(p.sites.matches(s) for p in policies)]
    names = {s.name for s in kept}

    def nearest(parent: str | None) -> str | None:
        while parent is not None and parent not in names:
            parent = by_name[parent].parent
        return parent

    return [attrs.evolve(s, parent=nearest(s.parent)) for s in kept]
