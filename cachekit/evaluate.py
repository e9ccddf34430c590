"""Cached against uncached on one model: the clips each makes, their wall time, and how close they are.

Shared by ``cachekit run`` and ``cachekit bench``. A *job* is a pipeline plus a function making
clips ``(n, 3, F, H, W)`` in [0, 1] with a pipeline from prompts and a seed (further keyword
arguments go to the pipeline call).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import attrs
import torch

from .errors import CachekitError

Generate = Callable[..., torch.Tensor]


def require(*modules: str) -> None:
    """Import-check the optional packages a command needs; one line naming the extra if missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CachekitError(f"this command needs {', '.join(missing)}: pip install 'cachekit[demo]'")


@attrs.frozen
class Job:
    """A pipeline and how to make clips with it."""

    pipe: Any
    generate: Generate
    prompts: tuple[str, ...]
    label: str
    #: The pipeline call's keyword arguments for (prompts, seed), where the job knows them.
    call_kwargs: Callable[[Sequence[str], int], dict[str, Any]] | None = None


def zoo_job(name: str, steps: int, guidance: float, prompts: Sequence[str] | None = None) -> Job:
    """The embedded model ``name``: clips of ``prompts`` (default: every prompt it was trained on)."""
    from . import zoo
    from .zoo import moving_shapes, weights

    pipe = zoo.load(name)
    path = weights.weights_path(name)
    chosen = tuple(prompts) if prompts else tuple(moving_shapes.prompts())
    for prompt in chosen:
        moving_shapes.tokenize(prompt)  # unknown words fail here, before any work

    def call_kwargs(batch: Sequence[str], seed: int) -> dict[str, Any]:
        return weights.call_kwargs(batch, steps=steps, seed=seed, guidance_scale=guidance, path=path)

    def generate(pipe: Any, batch: Sequence[str], seed: int, **extra: Any) -> torch.Tensor:
        return moving_shapes.to_unit(pipe(**call_kwargs(batch, seed), **extra).frames)

    return Job(pipe, generate, chosen, f"{name} ({type(pipe.transformer).__name__}, {steps} steps, guidance {guidance})",
               call_kwargs)


def hub_job(model: str, steps: int, guidance: float, prompts: Sequence[str]) -> Job:
    """Any diffusers video pipeline from a local path or hub id (weights must be reachable)."""
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(model)
    except Exception as err:  # offline, unknown id, not a pipeline: one line
        raise CachekitError(f"--model {model!r}: cannot load a diffusers pipeline ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200]})") from None

    return pipeline_job(pipe, prompts, f"{model} ({type(pipe).__name__}, {steps} steps)",
                        num_inference_steps=steps, guidance_scale=guidance)


def pipeline_job(pipe: Any, prompts: Sequence[str], label: str, **call_kwargs: Any) -> Job:
    """A diffusers video pipeline called with text prompts, a seeded generator and ``call_kwargs``;
    its frames taken as ``output_type="pt"`` gives them."""

    def kwargs(batch: Sequence[str], seed: int) -> dict[str, Any]:
        return dict(prompt=list(batch), output_type="pt", generator=torch.Generator().manual_seed(seed), **call_kwargs)

    def generate(pipe: Any, batch: Sequence[str], seed: int, **extra: Any) -> torch.Tensor:
        out = pipe(**kwargs(batch, seed), **extra).frames
        frames = out if isinstance(out, torch.Tensor) else torch.as_tensor(out)
        return frames.permute(0, 2, 1, 3, 4).float().clamp(0, 1)  # (n, F, C, H, W) -> (n, C, F, H, W)

    return Job(pipe, generate, tuple(prompts), label, kwargs)


def psnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of clips in [0, 1] (inf when identical)."""
    mse = float(((reference.double() - other.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def ssim(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean structural similarity over every frame (torchmetrics, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    def frames(clips: torch.Tensor) -> torch.Tensor:
        return clips.permute(0, 2, 1, 3, 4).flatten(0, 1).double()

    size = min(reference.shape[-2:])
    kernel = min(11, size - (1 - size % 2))  # an odd Gaussian window that fits small frames
    return float(structural_similarity_index_measure(frames(other), frames(reference), data_range=1.0,
                                                     kernel_size=kernel))


def timed(call: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


@attrs.frozen
class Comparison:
    reference: torch.Tensor
    cached: torch.Tensor
    uncached_seconds: float
    cached_seconds: float
    psnr: float
    ssim: float

    @property
    def speedup(self) -> float:
        return self.uncached_seconds / self.cached_seconds


def _labelled(pipe: Any, desc: str) -> Any:
    """``pipe`` with its progress bars labelled ``desc``, its other progress bar settings kept."""
    pipe.set_progress_bar_config(**{**getattr(pipe, "_progress_bar_config", {}), "desc": desc})
    return pipe


def compare(job: Job, config: Any, prompts: Sequence[str], seed: int, repeats: int = 3) -> tuple[Comparison, Any]:
    """Uncached and cached clips of ``prompts``. The cached runs use a copy of the pipeline (same
    weights), so both stay ready: one warm-up run each (the cached one plans and profiles the
    model), then ``repeats`` timed runs interleaved, medians compared. Returns the comparison and
    the cachekit session, whose report is the last cached run's."""
    import copy

    from .api import disable, enable

    twin = copy.deepcopy(job.pipe)
    session = enable(twin, config, profile=True)  # a timed prediction beside the timed runs
    try:
        job.generate(_labelled(job.pipe, f"uncached, seed {seed}, warm-up"), prompts, seed)
        job.generate(_labelled(twin, f"cached, seed {seed}, warm-up (plans and profiles)"), prompts, seed)
        plain, fast = [], []
        for i in range(repeats):
            round_ = f"seed {seed}, round {i + 1}/{repeats}"
            reference, seconds = timed(lambda: job.generate(_labelled(job.pipe, f"uncached, {round_}"), prompts, seed))
            plain.append(seconds)
            cached, seconds = timed(lambda: job.generate(_labelled(twin, f"cached, {round_}"), prompts, seed))
            fast.append(seconds)
    finally:
        disable(twin)
    result = Comparison(reference, cached, statistics.median(plain), statistics.median(fast),
                        psnr(reference, cached), ssim(reference, cached))
    return result, session
