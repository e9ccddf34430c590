"""Copies of an enabled model: ``copy.deepcopy``, ``pickle`` and ``torch.save`` see the plain model.

A hooked module's ``forward`` is a closure over the original module and its session; copied as is,
the copy would keep computing with the original's weights. So each hooked module carries an
instance ``__getstate__`` (read by ``copy`` and ``pickle`` alike) that leaves cachekit behind: the
copy has no hook, no session and computes plainly with its own weights.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .errors import EnableError

#: The attribute of an enabled model that holds its session.
SESSION_ATTR = "_cachekit_session"


def plain_state(module: torch.nn.Module, hook_names: tuple[str, ...], forward: Callable) -> dict[str, Any]:
    """``module``'s state for a copy or a pickle, without what cachekit installed on it: its
    ``forward`` (``forward``, the outermost hook's function), its ``_diffusers_hook`` registry when it
    holds cachekit's hooks (``hook_names``) only, the session and this function."""
    state = type(module).__getstate__(module)
    state.pop("__getstate__", None)
    state.pop(SESSION_ATTR, None)
    registry = state.get("_diffusers_hook")
    others = [name for name in getattr(registry, "hooks", {}) if name not in hook_names]
    if state.get("forward") is not forward or others:
        wrapper = ", ".join(repr(name) for name in others) or "another wrapper"
        raise EnableError(f"cannot copy or pickle {type(module).__name__} while cachekit is enabled on it and "
                          f"{wrapper} also wraps its forward; call cachekit.disable(...) first and enable the copy "
                          "on its own")
    del state["forward"]
    state.pop("_diffusers_hook", None)
    return state
