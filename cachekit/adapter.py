"""The adapter interface: how cachekit finds the sites, CFG layout and inputs of a model family."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch

from .errors import AdapterError
from .registry import registry
from .sites import Site

DOCS_ADAPTER = "docs/writing-an-adapter.md"


class Adapter(abc.ABC):
    """Describes one model family to cachekit. Subclasses set the class variables and ``sites``.

    ``cfg_layout`` is ``"batched"`` (one call per step with ``[uncond, cond]`` along the batch) or
    ``"split"`` (one call per branch, in ``call_order``).
    """

    name: ClassVar[str]
    #: Class names of the transformers this adapter handles, matched along the model's MRO.
    model_classes: ClassVar[tuple[str, ...]]
    cfg_layout: ClassVar[str] = "batched"
    call_order: ClassVar[tuple[str, ...]] = ("uncond", "cond")
    #: Keyword inputs that carry the CFG branches along dim 0 (positional tensors always do).
    batch_kwargs: ClassVar[tuple[str, ...]] = (
        "hidden_states", "encoder_hidden_states", "timestep", "attention_mask", "encoder_attention_mask",
    )

    def __init__(self, model: torch.nn.Module, pipe: Any = None) -> None:
        self.model = model
        #: The pipeline that owns ``model``, or None for a bare transformer.
        self.pipe = pipe

    @abc.abstractmethod
    def sites(self) -> list[Site]:
        """Every cacheable site, parents before children, the ``denoiser`` site first."""

    def cfg_active(self, pipe: Any) -> bool:
        """Whether the pipeline's current call runs classifier-free guidance, read when it sets its
        timesteps: its ``do_classifier_free_guidance`` property, else ``guidance_scale > 1``."""
        if hasattr(type(pipe), "do_classifier_free_guidance"):
            return bool(pipe.do_classifier_free_guidance)
        scale = getattr(pipe, "_guidance_scale", None)
        if scale is None:
            raise AdapterError(
                f"cannot tell whether {type(pipe).__name__} runs classifier-free guidance (no "
                f"do_classifier_free_guidance, no _guidance_scale); adapter '{self.name}' must override cfg_active"
            )
        return float(scale) > 1.0

    def example_call(self, batch: int) -> tuple[tuple, dict[str, Any]]:
        """Inputs for one forward of ``self.model`` with ``batch`` samples (used by dry-run cost counting)."""
        raise AdapterError(f"adapter '{self.name}' cannot build example inputs; run the pipeline once instead")

    def module(self, site: Site) -> torch.nn.Module:
        return self.model.get_submodule(site.module_path) if site.module_path else self.model

    def modules(self, site: Site) -> list[torch.nn.Module]:
        """Every module that plays ``site`` and is hooked for it: ``module(site)``, or one per expert
        where a pipeline switches between transformers of one architecture within a run."""
        return [self.module(site)]

    def frame_grid(self, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int]:
        """(frames, height, width) of the token grid of a denoiser call whose output is a token
        sequence (``Site.layout = "BLC"``), read from the call's inputs."""
        raise AdapterError(f"adapter '{self.name}' declares a token-sequence layout but no frame_grid")


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
    known = ", ".join(f"{a.name} ({', '.join(a.model_classes)})" for a in adapters) or "none"
    raise AdapterError(
        f"no cachekit adapter for {type(model).__name__}; registered adapters: {known}. "
        f"To add one, subclass cachekit.Adapter and register it (see {DOCS_ADAPTER})"
    )
