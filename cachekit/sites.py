"""Sites: the named places in a model whose output can be cached."""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable, Sequence

import attrs

#: The site kinds adapters use. A selector kind matches itself and its dotted children
#: ("attn" matches "attn.spatial", "attn.temporal" and "attn.cross").
SITE_KINDS = ("denoiser", "block", "attn.spatial", "attn.temporal", "attn.cross", "attn.joint", "mlp", "stack",
              "audio.attn.joint", "audio.attn.cross", "audio.mlp")

#: The block-stack site's name and kind: the span of transformer blocks as one residual site. A
#: selector picks it only by naming its kind or its name.
STACK = "stack"

#: CFG branch names. Batched layouts put them along the batch in this order.
BRANCHES = ("uncond", "cond")

#: A branch name: what a pipeline calls its pass in ``transformer.cache_context(name)`` ("cond",
#: "uncond", "uncond_stg", ...). Every run has "cond"; "+" joins branches decided together.
BRANCH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def branch_order(names: Iterable[str], call_order: Sequence[str] = ()) -> tuple[str, ...]:
    """A run's branches in the order plans and reports list them: those of ``BRANCHES`` first (uncond,
    cond), then the others in ``call_order`` (then as given)."""
    names = list(dict.fromkeys(names))
    rank = {b: i for i, b in enumerate((*BRANCHES, *(b for b in call_order if b not in BRANCHES)))}
    return tuple(sorted(names, key=lambda b: (rank.get(b, len(rank)), names.index(b))))


def check_branches(names: object, known: Sequence[str] | None = None, what: str = "branches") -> tuple[str, ...]:
    """``names`` as a tuple of branch names, or a ValueError naming what is wrong: each a name such as
    "uncond_stg" (letters, digits, underscores), given once, "cond" among them, and each one of
    ``known`` when given."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"{what} {names!r} is not a list of branch names; give names such as "
                         "['uncond', 'cond', 'uncond_stg']")
    for name in names:
        if not isinstance(name, str) or not BRANCH_NAME.fullmatch(name):
            raise ValueError(f"{what}: {name!r} is not a branch name; use letters, digits and underscores "
                             "('uncond', 'uncond_stg')")
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ValueError(f"{what} names {', '.join(map(repr, doubled))} more than once; name each branch once")
    if "cond" not in names:
        raise ValueError(f"{what} {tuple(names)!r} has no 'cond'; every run has the conditional branch")
    unknown = [n for n in names if known is not None and n not in known]
    if unknown:
        raise ValueError(f"{what}: {', '.join(map(repr, unknown))} is not a branch of this model; its adapter "
                         f"calls {', '.join(map(repr, known))}")
    return tuple(names)


@attrs.frozen
class Site:
    """One cacheable place: a module of the denoiser and how its output is cached.

    ``residual`` sites (whole blocks) cache ``output - input`` and add it back to the new input: each
    output tensor against the matching tensor input (the k-th tensor argument in the forward's
    parameter order, or the input named k-th where ``residual`` is a tuple of input names).
    ``parent`` names the enclosing site: when the parent is not computed, this site is not called.
    ``layout`` names the axes of the site's output for frequency-domain kernels ("BCFHW", "BFCHW",
    "BLC", "BTC", "CFHW" for one item without a batch axis); None where the output is not a video
    tensor; a tuple gives one layout per output tensor, for a module that returns several streams
    (LTX-2's video and audio: ``("BLC", "BTC")``).
    When only some of the CFG branches of a batched call compute, every tensor input of the site
    whose dim 0 is the call's batch is cut to them. ``batch_inputs`` names inputs of the site's
    module that carry the branches with another dim 0 (folded with another axis), ``shared_inputs``
    inputs that never carry them though their dim 0 may equal or divide the batch; both add to the
    adapter's ``batch_kwargs`` / ``shared_kwargs``.
    ``span`` (the ``stack`` site only): the module paths of the blocks the stack runs through, in call
    order; ``module_path`` is the first of them. ``head``: the blocks run right before the span at every
    step (first to last), whose residual online policies measure.
    """

    name: str
    kind: str
    module_path: str
    block: int | None = None
    parent: str | None = None
    residual: bool | tuple[str, ...] = attrs.field(default=False, converter=lambda v: v if isinstance(v, bool) else _str_tuple(v))
    layout: str | tuple[str | None, ...] | None = attrs.field(
        default=None, converter=lambda v: tuple(v) if isinstance(v, list) else v)
    batch_inputs: tuple[str, ...] | None = attrs.field(default=None, converter=lambda v: None if v is None else _str_tuple(v))
    shared_inputs: tuple[str, ...] | None = attrs.field(default=None, converter=lambda v: None if v is None else _str_tuple(v))
    span: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    head: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    def matches_kind(self, kind: str) -> bool:
        return self.kind == kind or self.kind.startswith(kind + ".")

    @property
    def layouts(self) -> tuple[str | None, ...]:
        """The layout of each output tensor: ``layout`` itself where it is a tuple, else that one layout
        (for every output)."""
        return self.layout if isinstance(self.layout, tuple) else (self.layout,)


def with_stack(sites: list[Site], blocks: list[Site], head: list[Site] = ()) -> list[Site]:
    """``sites`` with the ``stack`` site spanning ``blocks`` (``head``: blocks run right before them)
    inserted after the denoiser, and those blocks re-parented to it (nothing changes when ``blocks``
    is empty)."""
    if not blocks:
        return list(sites)
    names = {b.name for b in blocks}
    stack = Site(STACK, STACK, blocks[0].module_path, None, sites[0].name, residual=blocks[0].residual,
                 batch_inputs=blocks[0].batch_inputs, shared_inputs=blocks[0].shared_inputs,
                 span=tuple(b.module_path for b in blocks), head=tuple(b.module_path for b in head))
    rest = [attrs.evolve(s, parent=STACK) if s.name in names else s for s in sites[1:]]
    return [sites[0], stack, *rest]


def narrow_stack(sites: list[Site], first: int, last: int) -> list[Site]:
    """``sites`` with the stack keeping its first ``first`` and last ``last`` blocks out of the span
    (computed at every step, as DBCache's Fn and Bn); those blocks return to the stack's parent."""
    stack = next((s for s in sites if s.kind == STACK), None)
    if stack is None or (first, last) == (0, 0):
        return list(sites)
    if first + last >= len(stack.span):
        raise ValueError(f"the block stack has {len(stack.span)} blocks; keeping the first {first} and last {last} "
                         "computed leaves none to cache")
    span = stack.span[first:len(stack.span) - last]
    out = set(stack.span) - set(span)
    narrowed = attrs.evolve(stack, module_path=span[0], span=span, head=stack.head + stack.span[:first])
    return [narrowed if s is stack else attrs.evolve(s, parent=stack.parent)
            if s.parent == STACK and s.module_path in out else s for s in sites]


def parse_blocks(spec: str) -> list[tuple[int, int | None]]:
    """Parse a block range spec such as ``"0-3,7,10-"`` into inclusive ``(lo, hi)`` pairs (hi None = open)."""
    ranges: list[tuple[int, int | None]] = []
    for part in spec.replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"bad block range {part!r}")
        ranges.append((int(lo), int(hi) if hi else (None if sep else int(lo))))
        if ranges[-1][1] is not None and ranges[-1][1] < ranges[-1][0]:
            raise ValueError(f"block range {part!r} runs backwards")
    return ranges


def _blocks_spec(value: object) -> str | None:
    """A block index or a list of them as a range spec; anything else is left to the validator."""
    indices = [value] if isinstance(value, int) else value if isinstance(value, (list, tuple)) else None
    if indices is None or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 for v in indices):
        return value  # the validator names the problem
    return ",".join(str(v) for v in indices)


def _check_blocks(instance: object, attribute: attrs.Attribute, value: str | None) -> None:
    from .errors import FieldError

    if value is None:
        return
    allowed = 'a block range like "0-3,7,10-" or a list of block indices'
    if not isinstance(value, str):
        raise FieldError("sites.blocks", value, allowed)
    try:
        parse_blocks(value)
    except ValueError:
        raise FieldError("sites.blocks", value, allowed) from None


def _check_kinds(instance: object, attribute: attrs.Attribute, value: tuple) -> None:
    from .errors import FieldError

    if not isinstance(value, tuple):
        raise FieldError("sites.kinds", value, "a list of site kinds")
    for kind in value:
        if not isinstance(kind, str) or not any(k == kind or k.startswith(kind + ".") for k in SITE_KINDS):
            raise FieldError("sites.kinds", kind, f"one of {', '.join(SITE_KINDS)} (or a prefix such as 'attn')")


def _check_names(instance: object, attribute: attrs.Attribute, value: tuple) -> None:
    from .errors import FieldError

    if not isinstance(value, tuple) or not all(isinstance(n, str) for n in value):
        raise FieldError("sites.names", value, "a list of site-name patterns such as \"blocks.1*\"")


def _str_tuple(value: object) -> tuple:
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, (list, tuple)) else value


@attrs.frozen
class Selector:
    """Which sites a policy claims: by kind, block range and/or name pattern (all given must match)."""

    kinds: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple, validator=_check_kinds)
    blocks: str | None = attrs.field(default=None, converter=_blocks_spec, validator=_check_blocks)
    names: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple, validator=_check_names)

    def matches(self, site: Site) -> bool:
        if self.kinds and not any(site.matches_kind(k) for k in self.kinds):
            return False
        if site.kind == STACK and not self.kinds and not self.names:  # the stack is chosen by name only
            return False
        if self.blocks is not None:
            if site.block is None:
                return False
            if not any(lo <= site.block and (hi is None or site.block <= hi) for lo, hi in parse_blocks(self.blocks)):
                return False
        if self.names and not any(fnmatch.fnmatchcase(site.name, p) for p in self.names):
            return False
        return True

    def select(self, sites: Iterable[Site]) -> list[Site]:
        return [s for s in sites if self.matches(s)]
