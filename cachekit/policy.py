"""The policy base classes, step windows and the actions a policy plans."""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping, Sequence

import attrs

from . import fields
from .errors import FieldError, PlanError
from .sites import Selector, Site

#: A node of the step plan: (step index, site name, CFG branch).
NodeKey = tuple[int, str, str]

COMPUTE, REUSE, RECONSTRUCT, ONLINE, SKIP = "compute", "reuse", "reconstruct", "online", "skip"
ACTION_KINDS = (COMPUTE, REUSE, RECONSTRUCT, ONLINE, SKIP)


@attrs.frozen
class Action:
    """What one node does.

    ``reuse`` returns the stored output of ``sources[0]``; ``reconstruct`` calls the registered
    kernel ``kernel`` on the stored outputs of ``sources`` with ``params``; ``online`` lets the
    policy decide at run time between computing and reusing ``sources[0]``; ``skip`` marks a node
    whose enclosing site is not computed, so the call never happens.
    """

    kind: str
    sources: tuple[NodeKey, ...] = ()
    kernel: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    policy: str | None = None

    @classmethod
    def compute(cls, policy: str | None = None) -> "Action":
        return cls(COMPUTE, policy=policy)

    @classmethod
    def reuse(cls, source: NodeKey, policy: str | None = None) -> "Action":
        return cls(REUSE, (source,), policy=policy)

    @classmethod
    def reconstruct(
        cls, kernel: str, sources: Sequence[NodeKey], params: Mapping[str, Any] | None = None, policy: str | None = None
    ) -> "Action":
        return cls(RECONSTRUCT, tuple(sources), kernel, tuple(sorted((params or {}).items())), policy)

    @classmethod
    def online(cls, anchor: NodeKey, policy: str | None = None) -> "Action":
        return cls(ONLINE, (anchor,), policy=policy)


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
    #: Which CFG branches the policy acts on by default (None = every branch of the run).
    default_branches: ClassVar[tuple[str, ...] | None] = None

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

    def check_config(self, policies: Sequence["Policy"]) -> None:
        """Raise FieldError if this policy disagrees with another entry of the same config."""

    def check_site(self, site: Site) -> None:
        """Raise PlanError if this policy cannot act on ``site`` (called at enable time)."""

    def steps(self, site: Site, timesteps: Sequence[float] | None, num_steps: int) -> list[int]:
        """The steps this policy acts on at ``site``: its window's (override for per-kind windows)."""
        return self.window.steps(timesteps, num_steps)

    @abc.abstractmethod
    def plan_site(self, site: Site, branch: str, steps: Sequence[int], timesteps: Sequence[float] | None) -> dict[int, Action]:
        """Actions for ``site`` on ``branch`` at each of ``steps`` (the window's steps, ascending)."""


@attrs.frozen
class OnlineContext:
    """What an online node's decision sees: where the run is, and this branch's part of the call
    (whatever the CFG layout, and whichever branches the call carries)."""

    step: int
    #: The step's timestep, None when the run's timesteps are unknown (a bare transformer).
    timestep: float | None
    branch: str
    site: Site
    #: This branch's slice of the call's positional arguments and keyword arguments.
    inputs: tuple
    kwargs: dict
    #: Private to this (run, site, branch); its tensors count in the run's cache bytes.
    state: dict
    #: Shared by this policy's nodes of this branch in the run, for step-level decisions (decide at a
    #: first site, follow that decision at the others); its tensors count in the cache bytes.
    shared: dict


@attrs.frozen(kw_only=True)
class OnlinePolicy(Policy):
    """A policy whose nodes are decided at run time from a signal (TeaCache-like).

    The plan bounds it: each online node may either compute or reuse its anchor's stored output.
    """

    @abc.abstractmethod
    def decide(self, context: OnlineContext) -> bool:
        """Return True to reuse the stored output, False to compute."""

    @abc.abstractmethod
    def observe(self, context: OnlineContext, output: tuple) -> None:
        """Called after the node computed, with this branch's output tensors, to update the state."""
