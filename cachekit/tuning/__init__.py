"""``cachekit tune``: calibrate on a few prompts, search static plans and adaptive thresholds for a
FLOPs budget or a PSNR floor, check the best candidates by running them, write the config."""

from __future__ import annotations

from typing import Any, Sequence

from ..evaluate import Job, pipeline_job
from .tuner import Tuned, tune_job


def tune(pipe: Any, prompts: Sequence[str], *, budget: float | Sequence[float] | None = None,
         min_psnr: float | None = None, seed: int = 1000, out: str | None = None, **call_kwargs: Any) -> Tuned:
    """The best cachekit plan for ``pipe`` on ``prompts`` (the calibration prompts, 4-8 is plenty):
    at most ``budget`` of the uncached FLOPs with the highest PSNR against uncached, or the fewest
    FLOPs at ``min_psnr`` dB or more. ``call_kwargs`` go to every pipeline call
    (``num_inference_steps``, ``guidance_scale``, ``height``, ...); the pipeline is called with
    ``prompt``, a generator seeded ``seed`` and ``output_type="pt"``. ``out``: also write the config
    (TOML), which ``cachekit.enable(pipe, out)`` loads. A :class:`~cachekit.evaluate.Job` may be passed
    instead of a pipeline (how the embedded models are called)."""
    job = pipe if isinstance(pipe, Job) else pipeline_job(pipe, prompts, type(pipe).__name__, **call_kwargs)
    tuned = tune_job(job, budget=budget, min_psnr=min_psnr, prompts=prompts, seed=seed)
    if out is not None:
        with open(out, "w", encoding="utf-8") as f:
            f.write(tuned.toml())
    return tuned


__all__ = ["Tuned", "tune", "tune_job"]
