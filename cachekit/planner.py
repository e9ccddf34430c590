"""The planner: turns (schedule, sites, policies) into a validated StepPlan.

Composition rule: each policy claims the nodes (step, site, branch) its selector, window and
branches cover. Where two policies claim the same node, the one with the higher ``priority``
wins; equal priorities are an error naming both. Unclaimed nodes compute. A node whose enclosing
site (its parent) is not computed becomes ``skip``: the call never happens. Sites are planned
parents first, and a policy is shown only the steps of its window where the site is called on
that branch. The plan holds the denoiser and the sites some policy selects; the rest always
compute and are not hooked.
"""

from __future__ import annotations

from typing import Sequence

import attrs
import networkx as nx

from .errors import PlanError
from .policy import COMPUTE, REUSE, SKIP, Action, NodeKey, Policy
from .plan import StepPlan
from .sites import Site


def build_plan(
    policies: Sequence[Policy],
    sites: Sequence[Site],
    branches: Sequence[str],
    num_steps: int,
    timesteps: Sequence[float] | None = None,
) -> StepPlan:
    if num_steps < 1:
        raise PlanError(f"a run needs at least one step, got num_steps={num_steps}")
    if timesteps is not None and len(timesteps) != num_steps:
        raise PlanError(f"{len(timesteps)} timesteps given for a {num_steps}-step run")
    check_selections(policies, sites)
    sites = planned_sites(sites, policies)
    compute, skip = Action(COMPUTE), Action(SKIP)
    final: dict[NodeKey, Action] = {}
    for site in sites:  # parents come first, so a site's policies see where it is called
        claims = _claims(site, policies, branches, num_steps, timesteps, final)
        for step in range(num_steps):
            for branch in branches:
                node = (step, site.name, branch)
                if site.parent is not None and final[(step, site.parent, branch)].kind != COMPUTE:
                    final[node] = skip
                else:
                    final[node] = claims[node][0] if node in claims else compute
    for node, action in final.items():  # a reuse of a reuse reads the original producer
        if action.kind == REUSE and action.sources and action.sources[0] in final:
            source = action.sources[0]
            while final[source].kind == REUSE and final[source].sources:
                source = final[source].sources[0]
            final[node] = attrs.evolve(action, sources=(source,))
    graph = nx.DiGraph()
    graph.add_nodes_from((node, {"action": action}) for node, action in final.items())
    graph.add_edges_from((src, node) for node, action in final.items() for src in action.sources if src in final)
    plan = StepPlan(graph, sites, branches, num_steps, timesteps)
    plan.validate()
    return plan


def _claims(site: Site, policies: Sequence[Policy], branches: Sequence[str], num_steps: int,
            timesteps: Sequence[float] | None, final: dict[NodeKey, Action]) -> dict[NodeKey, tuple[Action, Policy]]:
    """Each policy's actions for ``site``, given the steps its window holds where the site is called."""
    claims: dict[NodeKey, tuple[Action, Policy]] = {}
    for policy in policies:
        if not policy.sites.matches(site):
            continue
        window = policy.steps(site, timesteps, num_steps)  # may be empty for a short run: the run warns
        for branch in policy.branches(branches):
            called = [s for s in window if site.parent is None or final[(s, site.parent, branch)].kind == COMPUTE]
            if not called:  # nothing to claim; a policy idle for the whole run is named when it ends
                continue
            planned = policy.plan_site(site, branch, called, timesteps)
            stray = sorted(set(planned) - set(called))
            if stray:
                raise PlanError(f"policy '{policy.name}' planned {site.name} [{branch}] at steps {stray[:5]}, outside "
                                "the steps it was given (its window, where the site is called)")
            for step, action in planned.items():
                node = (step, site.name, branch)
                action = Action(action.kind, action.sources, action.kernel, action.params, policy.name)
                held = claims.get(node)
                if held is not None:
                    other = held[1]
                    if other.priority == policy.priority:
                        raise PlanError(
                            f"policies '{other.name}' and '{policy.name}' both claim node {node} at priority "
                            f"{policy.priority}; set a higher 'priority' on the one that should win, or narrow a selector/window"
                        )
                    if other.priority > policy.priority:
                        continue
                claims[node] = (action, policy)
    return claims


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
