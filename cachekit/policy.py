"""The policy base classes, step windows and the actions a policy plans."""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Mapping, Sequence

import attrs

from . import fields
from .errors import FieldError, PlanError
from .sites import Selector, Site

#: A node of the step plan: (step index, site name, CFG branch).
NodeKey = tuple[int, str, str]

COMPUTE, REUSE, RECONSTRUCT, ONLINE, SKIP = "compute", "reuse", "reconstruct", "online", "skip"
ACTION_KINDS = (COMPUTE, REUSE, RECONSTRUCT, ONLINE, SKIP)


@attrs.frozen
class Ref:
    """A source the planner binds for a node (step s, site, branch): an output of the same site.

    ``back = n >= 1``: the output of ``branch`` (None: the node's own) at the n-th most recent step
    before s where that branch computed this site; ``back = 0``: ``branch``'s output at step s
    (a branch called before the node's own). ``at = i``: ``branch``'s output at the step that the
    i-th ref of the same action was bound to (two branches of one step).
    """

    branch: str | None = None
    back: int = 1
    at: int | None = None


@attrs.frozen
class Action:
    """What one node does.

    ``reuse`` returns the stored output of ``sources[0]``; ``reconstruct`` calls the registered
    kernel ``kernel`` on the stored outputs of ``sources`` with ``params``; ``online`` lets the
    policy decide at run time between computing and reusing ``sources[0]``; ``skip`` marks a node
    whose enclosing site is not computed, so the call never happens.

    A policy states what it wants with ``refs`` instead of ``sources``; the planner binds them to
    the outputs really computed (a want whose refs find no such output computes instead).
    ``guard``: rebuild only where every branch called at this step last computed the site at the
    same step (one batched cache); elsewhere compute every guarded branch.
    ``observe``: a ``compute`` node whose output the planning online policy observes (an online want
    with nothing computed yet to fall back on computes and is observed).
    An ``online`` node with a ``kernel`` reconstructs from its sources (the ``len(sources)`` latest
    outputs computed on its branch, oldest first) instead of reusing the latest.
    """

    kind: str
    sources: tuple[NodeKey, ...] = ()
    kernel: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    policy: str | None = None
    refs: tuple[Ref, ...] = ()
    guard: bool = False
    observe: bool = False

    @classmethod
    def compute(cls, policy: str | None = None, observe: bool = False) -> "Action":
        """Run the site; ``observe``: an online policy observes the output (warm-up steps)."""
        return cls(COMPUTE, policy=policy, observe=observe)

    @classmethod
    def reuse(cls, source: NodeKey | None = None, policy: str | None = None, guard: bool = False) -> "Action":
        """Reuse ``source``, or (None) the latest output this site computed on this branch."""
        if source is None:
            return cls(REUSE, policy=policy, refs=(Ref(),), guard=guard)
        return cls(REUSE, (source,), policy=policy)

    @classmethod
    def reconstruct(
        cls, kernel: str, sources: Sequence[NodeKey] = (), params: Mapping[str, Any] | None = None,
        policy: str | None = None, refs: Sequence[Ref] = (), guard: bool = False,
    ) -> "Action":
        """Call ``kernel`` on ``sources`` (explicit nodes) or on what ``refs`` bind to."""
        return cls(RECONSTRUCT, tuple(sources), kernel, tuple(sorted((params or {}).items())), policy, tuple(refs), guard)

    @classmethod
    def rebuild(cls, kernel: str, history: int, params: Mapping[str, Any] | None = None, guard: bool = False) -> "Action":
        """Call ``kernel`` on the ``history`` latest outputs this site computed on this branch, oldest first."""
        return cls.reconstruct(kernel, params=params, refs=[Ref(back=k) for k in range(history, 0, -1)], guard=guard)

    @classmethod
    def online(cls, anchor: NodeKey | None = None, policy: str | None = None, kernel: str | None = None,
               history: int = 1, params: Mapping[str, Any] | None = None) -> "Action":
        """Decide at run time between computing and, on a skip, reusing ``anchor`` (None: the latest
        output computed on this branch) or, with ``kernel``, rebuilding from the ``history`` latest
        outputs computed on this branch, oldest first. Where fewer than ``history`` are computed by
        plan when the node comes (one warm-up step), the node still decides: its kernel gets the
        outputs computed so far, and with one of them a skip reuses it."""
        extra = tuple(sorted((params or {}).items()))
        if anchor is not None:
            return cls(ONLINE, (anchor,), kernel, extra, policy)
        return cls(ONLINE, (), kernel, extra, policy, tuple(Ref(back=k) for k in range(history, 0, -1)))


@attrs.frozen
class RunInfo:
    """What a policy is told about the run it plans: its length, timesteps, CFG branches and layout."""

    num_steps: int
    timesteps: tuple[float, ...] | None = None
    branches: tuple[str, ...] = ("cond",)
    #: "batched": one call carries every branch; "split": one call per branch (or per call group).
    cfg_layout: str = "batched"
    #: The denoiser calls of one step, each the branches it carries along dim 0 (None: from the
    #: layout, one call carrying every branch or one call per branch).
    calls: tuple[tuple[str, ...], ...] | None = None

    def call_groups(self) -> tuple[tuple[str, ...], ...]:
        """The branches of each denoiser call of one step: ``calls``, else from the layout."""
        if self.calls is not None:
            return self.calls
        return (self.branches,) if self.cfg_layout == "batched" else tuple((b,) for b in self.branches)


def _window_bound(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise FieldError(f"window.{attribute.name}", value, "a number")


@attrs.frozen
class Window:
    """The steps a policy acts on.

    ``unit = "fraction"``: steps i with ``start <= i / n < end`` (0 <= start < end <= 1);
    ``unit = "step"``: ``start <= i < end``; ``unit = "timestep"``: steps whose timestep t lies
    strictly between the two bounds (diffusers' convention).
    """

    start: float = attrs.field(default=0.0, validator=_window_bound)
    end: float = attrs.field(default=1.0, validator=_window_bound)
    unit: str = attrs.field(default="fraction", validator=fields.one_of("fraction", "step", "timestep", name="window.unit"))

    def __attrs_post_init__(self) -> None:
        if self.unit == "fraction" and not 0 <= self.start < self.end <= 1:
            raise FieldError("window", (self.start, self.end), "fractions with 0 <= start < end <= 1")
        if self.unit == "step":
            if not all(float(v).is_integer() for v in (self.start, self.end)) or not 0 <= self.start < self.end:
                raise FieldError("window", (self.start, self.end), "step indices with 0 <= start < end")
        if self.unit == "timestep" and self.start == self.end:
            raise FieldError("window", (self.start, self.end), "two different timestep bounds")

    def steps(self, timesteps: Sequence[float] | None, num_steps: int) -> list[int]:
        """The step indices of a ``num_steps`` run inside this window."""
        if self.unit == "fraction":
            return [i for i in range(num_steps) if self.start <= i / num_steps < self.end]
        if self.unit == "step":
            if self.end > num_steps:
                raise PlanError(f"window [{self.start}, {self.end}) lies outside the {num_steps}-step run (steps 0..{num_steps - 1})")
            return list(range(int(self.start), int(self.end)))
        if timesteps is None:
            raise PlanError("a window in timestep units needs the run's timesteps; run through a pipeline or use fractions")
        lo, hi = sorted((self.start, self.end))
        return [i for i, t in enumerate(timesteps) if lo < t < hi]


@attrs.frozen(kw_only=True)
class Policy(abc.ABC):
    """A cache policy: frozen, validated parameters plus the rule that turns them into actions.

    Subclasses set ``type_name``, add fields with validators, may override the defaults of
    ``sites`` and ``window``, and implement :meth:`plan_site`.
    """

    type_name: ClassVar[str]
    #: Which branches the policy acts on by default (None = every branch of the run, each planned from
    #: its own outputs: "uncond", "cond" and any other pass such as "uncond_stg").
    default_branches: ClassVar[tuple[str, ...] | None] = None
    #: A recorder, whose observations are its purpose: they are kept in a plan that holds none of its
    #: decisions (another policy's are dropped there: no signal is read per call for nothing).
    records: ClassVar[bool] = False

    label: str | None = attrs.field(default=None, validator=fields.optional_str)
    sites: Selector = attrs.field(factory=Selector, converter=fields.structured(Selector, "sites"))
    window: Window = attrs.field(factory=Window, converter=fields.structured(Window, "window"))
    priority: int = attrs.field(default=0, validator=fields.integer())

    @property
    def name(self) -> str:
        """The entry's name in a config: its label, else its type."""
        return self.label or self.type_name

    def branches(self, run_branches: Sequence[str]) -> tuple[str, ...]:
        if self.default_branches is None:
            return tuple(run_branches)
        return tuple(b for b in run_branches if b in self.default_branches)

    def derives_from(self, branch: str) -> tuple[str, ...]:
        """The other branches this policy may read to build ``branch``'s outputs (a rebuild across
        branches, as CFG-Cache rebuilds "uncond" from "cond"); none by default. The planner refuses a
        want that reads a branch not listed here: a branch is built from its own outputs unless its
        policy declares the pair (docs/architecture.md, "Branches")."""
        return ()

    def check_config(self, policies: Sequence["Policy"]) -> None:
        """Raise FieldError if this policy disagrees with another entry of the same config."""

    def check_site(self, site: Site) -> None:
        """Raise PlanError if this policy cannot act on ``site`` (called at enable time)."""

    def steps(self, site: Site, run: RunInfo) -> list[int]:
        """The steps this policy acts on at ``site``: its window's (override for per-kind windows)."""
        return self.window.steps(run.timesteps, run.num_steps)

    @abc.abstractmethod
    def plan_site(self, site: Site, branch: str, steps: Sequence[int], run: RunInfo) -> dict[int, Action]:
        """What this policy wants for ``site`` on ``branch`` at each of ``steps`` (its window's steps
        where the site is called on that branch, ascending). Wants name sources by ``refs``; the
        planner binds them."""

    def bound(self, node: NodeKey, action: Action, run: RunInfo) -> Action:
        """The action once the planner bound its sources (override to set parameters that depend
        on which steps they come from)."""
        return action

    def stack_bounds(self) -> tuple[int | None, int] | None:
        """(first, last): how many blocks at each end of the block stack stay computed at every step,
        for a policy acting on the ``stack`` site (DBCache's Fn, Bn); None: no preference (0, 0).
        ``first`` None: one measured block before the stack, the adapter's own head where it has one,
        else the stack's first block. Policies on one stack must agree."""
        return None


#: Decision scopes of an online policy: one decision per CFG branch, per denoiser call (every branch
#: the call carries decides together, as diffusers' hooks do), or per step (the first of the policy's
#: sites called in a step decides for the call, its other sites follow).
SCOPES = ("branch", "call", "step")


def signal_value(value: Any, over: Any = None) -> float:
    """A measured signal (a 0-d tensor or a number), or the ratio ``value / over``, as one process
    measures it: one host sync."""
    value = value / over if over is not None else value
    return float(value.item() if hasattr(value, "item") else value)


@attrs.frozen
class OnlineContext:
    """What an online node's decision sees: where the run is, and its part of the call: one branch's
    slice (scope ``branch``), or every branch the call carries together (scopes ``call``, ``step``)."""

    step: int
    #: The step's timestep, None when the run's timesteps are unknown (a bare transformer).
    timestep: float | None
    #: The branch decided for, or the branches decided together joined by "+" ("uncond+cond").
    branch: str
    site: Site
    #: The decision's slice of the call's positional arguments and keyword arguments.
    inputs: tuple
    kwargs: dict
    #: Private to this (run, site, branch); its tensors count in the run's cache bytes.
    state: dict
    #: Shared by this policy's nodes of this branch in the run, for step-level decisions (decide at a
    #: first site, follow that decision at the others); its tensors count in the cache bytes.
    shared: dict
    #: The run's number of steps.
    num_steps: int = 0
    #: The branches decided for, in call order.
    branches: tuple[str, ...] = ()
    #: The stack site only, when blocks run right before it: the first of them's inputs and the last
    #: of them's outputs at this call (matched tensors, hidden states first); else None.
    head_inputs: tuple | None = None
    head_outputs: tuple | None = None
    #: How a measured signal becomes the number every rank decides on (see :meth:`signal`).
    reduce: Callable[[Any, Any], float] = signal_value
    #: Builds the denoiser call's visual input for :meth:`latents` (None outside a denoiser call).
    call_latents: Callable[[], Any] | None = None

    def signal(self, value: Any, over: Any = None) -> float:
        """A measured signal (a 0-d tensor or a number) as a Python float, the same on every rank of a
        context-parallel group; with ``over``, the ratio ``value / over`` (a relative change: under
        context parallelism each rank measures its sequence shard, and both are averaged over the
        ranks before dividing, so the ratio is the whole sequence's). Every decision should read its
        tensors through this: one host sync, and one all-reduce under context parallelism."""
        return self.reduce(value, over)

    def latents(self) -> Any:
        """The visual input of the denoiser call this decision belongs to, as (B, C, F, H, W) video
        latents (the model's ``hidden_states``, in the layout its adapter declares), cut to the branches
        decided for; None where the layout is unknown. Built on first use, at any site."""
        return self.call_latents() if self.call_latents is not None else None


@attrs.frozen(kw_only=True)
class OnlinePolicy(Policy):
    """A policy whose nodes are decided at run time from a signal (TeaCache-like).

    The plan bounds it: each online node may either compute or reuse its anchor's stored output (or
    rebuild from its sources with the action's kernel). ``scope`` sets what one decision covers.
    """

    scope: str = attrs.field(default="branch", validator=fields.one_of(*SCOPES, name="scope"))

    @abc.abstractmethod
    def decide(self, context: OnlineContext) -> bool:
        """Return True to reuse the stored output, False to compute."""

    @abc.abstractmethod
    def observe(self, context: OnlineContext, output: tuple) -> None:
        """Called after the node computed, with this branch's output tensors, to update the state."""
