"""The step plan: a networkx graph of (step, site, branch) nodes with actions, its validation,
liveness, cost prediction, and the flat per-step table the runtime executes."""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

import attrs
import networkx as nx

from .errors import PlanError
from .policy import COMPUTE, ONLINE, RECONSTRUCT, REUSE, SKIP, Action, NodeKey
from .sites import Site

SYMBOLS = {COMPUTE: "C", REUSE: "R", RECONSTRUCT: "X", ONLINE: "?", SKIP: "."}
#: Actions whose output is known from the plan, so later nodes may read it.
PRODUCERS = (COMPUTE, RECONSTRUCT)


@attrs.frozen
class SiteOp:
    """What the runtime does at one site in one step: an action per active branch, in call order."""

    branches: tuple[str, ...]
    actions: tuple[Action, ...]
    store: tuple[bool, ...]
    #: Per branch, the stored outputs this node reads last: dropped once it ran.
    frees: tuple[tuple[NodeKey, ...], ...]
    #: True when every branch computes and nothing is stored: the call passes straight through.
    passthrough: bool


@attrs.frozen
class CompiledPlan:
    """The plan as flat lists: ``ops[step][site_index]``."""

    ops: tuple[tuple[SiteOp, ...], ...]
    #: The reconstruction kernels the plan calls.
    kernels: frozenset[str]
    #: The action kinds each policy's nodes carry in the plan.
    policy_kinds: dict[str, frozenset[str]]

    @property
    def is_static(self) -> bool:
        """No node is decided at run time: every run of the plan executes the same ops."""
        return not any(ONLINE in kinds for kinds in self.policy_kinds.values())


@attrs.frozen
class Prediction:
    """Cost-model output: cost fraction per step (planned/full), predicted speedup and peak cache bytes."""

    step_fractions: tuple[float, ...]
    speedup: float
    #: The speedup if every online node reused (equal to ``speedup`` for static plans).
    speedup_bound: float
    peak_cache_bytes: int
    #: What the costs were: "seconds" (timed calls) or "flops" (counted).
    basis: str = "flops"


class StepPlan:
    """One node per (step, site, branch), an action on each, an edge from producer to consumer."""

    def __init__(self, graph: nx.DiGraph, sites: Sequence[Site], branches: Sequence[str], num_steps: int,
                 timesteps: Sequence[float] | None = None, calls: Sequence[Sequence[str]] | None = None) -> None:
        self.graph = graph
        self.sites = tuple(sites)
        self.branches = tuple(branches)
        #: The branches each denoiser call of a step carries, in call order, where the run's layout
        #: groups them so (None: one call carrying every branch, or one call per branch when split).
        self.calls = tuple(tuple(group) for group in calls) if calls is not None else None
        self.num_steps = num_steps
        self.timesteps = tuple(timesteps) if timesteps is not None else None
        self.site_index = {s.name: i for i, s in enumerate(self.sites)}
        self._parent = {s.name: s.parent for s in self.sites}
        # A site's op completes after every op nested in it: order by the last descendant, deepest first.
        finish, depth = dict(self.site_index), {}
        for site in self.sites:
            depth[site.name] = depth[site.parent] + 1 if site.parent is not None else 0
        for site in reversed(self.sites):
            if site.parent is not None:
                finish[site.parent] = max(finish[site.parent], finish[site.name])
        self._completion = {name: (finish[name], -depth[name]) for name in finish}

    # -- inspection ---------------------------------------------------------------------------

    def action(self, node: NodeKey) -> Action:
        return self.graph.nodes[node]["action"]

    def nodes(self) -> Iterator[tuple[NodeKey, Action]]:
        for node, data in self.graph.nodes(data="action"):
            yield node, data

    def counts(self) -> dict[str, int]:
        """How many nodes carry each action kind."""
        counts = dict.fromkeys(SYMBOLS, 0)
        for _, action in self.nodes():
            counts[action.kind] += 1
        return counts

    @property
    def kernels(self) -> frozenset[str]:
        """The reconstruction kernels the plan calls (online nodes with a kernel call it when they skip)."""
        return frozenset(a.kernel for _, a in self.nodes() if a.kind == RECONSTRUCT or (a.kind == ONLINE and a.kernel))

    @property
    def is_static(self) -> bool:
        return not any(a.kind == ONLINE for _, a in self.nodes())

    @property
    def all_compute(self) -> bool:
        return all(a.kind == COMPUTE for _, a in self.nodes())

    # -- validation and liveness --------------------------------------------------------------

    def validate(self) -> None:
        """Every consumer reads an earlier (or same-step, other) node that is called and produces a value."""
        graph = self.graph
        for node, action in self.nodes():
            for src in action.sources:
                if src not in graph:
                    raise PlanError(f"node {node} ({action.kind} by '{action.policy}') reads {src}, which is not in the plan")
                src_action = graph.nodes[src]["action"]
                if src_action.kind == SKIP:
                    raise PlanError(
                        f"node {node} ({action.kind} by '{action.policy}') reads {src}, which is not called (its "
                        "enclosing site is not computed at that step); narrow one policy or change its priority"
                    )
                if action.kind == ONLINE and src_action.kind == ONLINE and src[1:] == node[1:] and src[0] <= node[0]:
                    continue  # a slot of the node's runtime history, filled as the online nodes compute
                if src_action.kind not in PRODUCERS:
                    raise PlanError(
                        f"node {node} ({action.kind} by '{action.policy}') reads {src}, which produces no value of its own "
                        f"({src_action.kind} by '{src_action.policy}'); read the node that computed it"
                    )
                if src[0] > node[0] or src == node or (src[0] == node[0] and src_action.kind != COMPUTE):
                    raise PlanError(f"node {node} ({action.kind} by '{action.policy}') reads {src}, which is not computed before it")

    def _order(self, node: NodeKey) -> tuple[int, int, int]:
        """When a node's op completes (one op serves every branch): its step, then nested ops before
        the op enclosing them."""
        return (node[0], *self._completion[node[1]])

    def stored(self) -> dict[NodeKey, NodeKey]:
        """Nodes whose output a later node reads, mapped to their last reader (freed once it ran).
        Readers at one step and site are ordered by the call that carries their branch, where the
        run's calls are known: in a split layout the later call reads last."""
        graph = self.graph
        call = {b: i for i, group in enumerate(self.calls or ()) for b in group}

        def last(node: NodeKey) -> tuple[int, ...]:
            return (*self._order(node), call.get(node[2], 0))

        return {node: max(graph.successors(node), key=last) for node in graph if graph.out_degree(node)}

    def live_after_ops(self) -> Iterator[set[NodeKey]]:
        """The stored outputs held after each (step, site) op that stores or frees one, in run order."""
        events: dict[tuple[int, int, int], list[tuple[NodeKey, bool]]] = {}
        for node, reader in self.stored().items():
            events.setdefault(self._order(node), []).append((node, True))
            events.setdefault(self._order(reader), []).append((node, False))
        live: set[NodeKey] = set()
        for op in sorted(events):
            for node, stored in events[op]:
                (live.add if stored else live.discard)(node)
            yield live

    def peak_live_per_site(self) -> dict[str, int]:
        """The most outputs of each site held at once between ops (all branches counted)."""
        peak: dict[str, int] = {}
        for live in self.live_after_ops():
            per_site: dict[str, int] = {}
            for node in live:
                per_site[node[1]] = per_site.get(node[1], 0) + 1
            for site, n in per_site.items():
                peak[site] = max(peak.get(site, 0), n)
        return peak

    # -- cost ---------------------------------------------------------------------------------

    def predict(self, cost: Mapping[int, Mapping[str, float]], site_bytes: Mapping[str, int], split: bool = False,
                basis: str = "flops", kernel_cost: Mapping[tuple[str, str], float] | None = None,
                decided: Mapping[NodeKey, str] | None = None) -> Prediction:
        """Predict speedup and peak cache bytes.

        ``cost[n][site]`` is the inclusive cost (FLOPs or seconds) of one call of ``site`` carrying
        ``n`` CFG branches (a missing ``n`` is scaled linearly from the largest known). A site that
        computes fewer branches than its call carries, or none, saves the difference inside its
        parent's call. ``split`` layouts make one call per branch. A reconstructed node costs
        ``kernel_cost[(site, kernel)]`` (free when absent); a reused one is free. ``decided``: the
        action each online node took in a run (its kinds), so that the prediction is of what ran.
        """
        decided = decided or {}
        kernel_cost = kernel_cost or {}
        known = max(cost)

        def of(n: int, site: str) -> float:
            return cost[n].get(site, 0.0) if n in cost else cost[known].get(site, 0.0) * n / known

        children: dict[str, list[str]] = {s.name: [] for s in self.sites}
        for site in self.sites:
            if site.parent is not None:
                children[site.parent].append(site.name)

        def call(step: int, site: str, branches: Sequence[str], online_reuses: bool) -> float:
            actions = [self.action((step, site, b)) for b in branches]
            kinds = [decided.get((step, site, b), a.kind) if a.kind == ONLINE else a.kind for b, a in zip(branches, actions)]
            rebuilt = sum(kernel_cost.get((site, a.kernel), 0.0) for a, k in zip(actions, kinds) if k == RECONSTRUCT)
            computing = [b for b, k in zip(branches, kinds) if k == COMPUTE or (k == ONLINE and not online_reuses)]
            if not computing:
                return rebuilt
            n = len(computing)
            return rebuilt + of(n, site) - sum(of(n, c) - call(step, c, computing, online_reuses) for c in children[site])

        calls = self._calls(self.branches, split)
        full = sum(of(len(c), "denoiser") for c in calls)
        if full <= 0:
            raise PlanError("the denoiser's cost must be positive to predict a speedup")
        fractions = tuple(sum(call(s, "denoiser", c, False) for c in calls) / full for s in range(self.num_steps))
        bound = sum(sum(call(s, "denoiser", c, True) for c in calls) / full for s in range(self.num_steps))
        peak = max((sum(site_bytes.get(n[1], 0) for n in live) for live in self.live_after_ops()), default=0)
        return Prediction(fractions, self.num_steps / sum(fractions), self.num_steps / bound, peak, basis)

    # -- execution table ----------------------------------------------------------------------

    def _calls(self, order: Sequence[str], split: bool) -> list[tuple[str, ...]]:
        """The branches of each denoiser call of a step: one call carrying ``order`` (batched), one
        call per branch (split), or the plan's call groups (split, several branches a call)."""
        if not split:
            return [tuple(order)]
        if self.calls is not None:
            return [group for group in self.calls if group]
        return [(b,) for b in order]

    def _check_call_order(self, order: Sequence[str]) -> None:
        """Split layout: a node reading another branch at the same step needs that branch called first
        (or carried by the same call)."""
        call = {b: i for i, group in enumerate(self._calls(order, True)) for b in group}
        for node, action in self.nodes():
            for src in action.sources:
                if src[0] == node[0] and src[2] != node[2] and call[src[2]] > call[node[2]]:
                    raise PlanError(
                        f"node {node} ({action.kind} by '{action.policy}') reads {src}, but the model calls the "
                        f"'{src[2]}' branch after '{node[2]}' (call order {', '.join(order)}); leave policy "
                        f"'{action.policy}' out (a config file with the other [[policy]] entries, as "
                        f"adapters/specs/vchitect-2.0.toml keeps FasterCache's attention entry alone) or make it "
                        f"read '{src[2]}' of an earlier step "
                        f"(Ref('{src[2]}', back=1), docs/writing-a-policy.md)"
                    )

    def compile(self, call_order: Sequence[str], split: bool = False) -> CompiledPlan:
        """Flatten into per-step, per-site ops; ``call_order`` is the order branches are called in
        (one call per branch when ``split``, else one call for all)."""
        stored = self.stored()
        dying: dict[NodeKey, list[NodeKey]] = {}
        for node, reader in stored.items():
            dying.setdefault(reader, []).append(node)
        order = [b for b in call_order if b in self.branches]
        if split:
            self._check_call_order(order)
        ops = []
        for step in range(self.num_steps):
            row = []
            for site in self.sites:
                nodes = [n for n in ((step, site.name, b) for b in order) if self.action(n).kind != SKIP]
                actions = tuple(self.action(n) for n in nodes)
                store = tuple(n in stored for n in nodes)
                passthrough = all(a.kind == COMPUTE and not a.observe for a in actions) and not any(store)
                row.append(SiteOp(tuple(n[2] for n in nodes), actions, store,
                                  tuple(tuple(dying.get(n, ())) for n in nodes), passthrough))
            ops.append(tuple(row))
        kinds: dict[str, set[str]] = {}
        for _, action in self.nodes():
            if action.policy is not None:
                kinds.setdefault(action.policy, set()).add(action.kind)
        return CompiledPlan(tuple(ops), self.kernels,
                            {name: frozenset(k) for name, k in kinds.items()})

    # -- views --------------------------------------------------------------------------------

    def grid(self, kind_of: Callable[[NodeKey], str] | None = None, caption: str = "") -> str:
        """Rows of sites (one per branch), columns of steps: C compute, R reuse, X reconstruct,
        ? decided online, . not called. ``kind_of`` gives each node's kind (default: planned)."""
        kind_of = kind_of or (lambda node: self.action(node).kind)
        width = max(len(s.name) for s in self.sites) + max(len(b) for b in self.branches) + 3
        lines = [f"{'site [branch]':<{width}} {caption}steps 0..{self.num_steps - 1}"]
        for site in self.sites:
            for branch in self.branches:
                row = "".join(SYMBOLS[kind_of((step, site.name, branch))] for step in range(self.num_steps))
                lines.append(f"{site.name + ' [' + branch + ']':<{width}} {row}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "num_steps": self.num_steps,
            "timesteps": list(self.timesteps) if self.timesteps is not None else None,
            "branches": list(self.branches),
            "sites": [attrs.asdict(s) for s in self.sites],
            "counts": self.counts(),
            "nodes": [
                {"step": n[0], "site": n[1], "branch": n[2], "action": a.kind, "policy": a.policy,
                 "kernel": a.kernel, "sources": [list(s) for s in a.sources]}
                for n, a in sorted(self.nodes(), key=lambda item: (item[0][0], self.site_index[item[0][1]], item[0][2]))
            ],
        }

    def to_dot(self) -> str:
        """Graphviz DOT of the non-trivial part of the plan (nodes that store, read or are read)."""
        colours = {COMPUTE: "lightblue", REUSE: "palegreen", RECONSTRUCT: "orange", ONLINE: "khaki", SKIP: "grey90"}
        shown = {n for n, a in self.nodes() if a.sources or self.graph.out_degree(n)}
        lines = ["digraph stepplan {", "  rankdir=LR;", "  node [shape=box, style=filled];"]
        for node in sorted(shown):
            action = self.action(node)
            lines.append(f'  "{node}" [label="{node[0]} {node[1]} [{node[2]}]\\n{action.kind}", fillcolor={colours[action.kind]}];')
        for src, dst in self.graph.edges():
            lines.append(f'  "{src}" -> "{dst}";')
        lines.append("}")
        return "\n".join(lines) + "\n"
