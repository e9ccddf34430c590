"""What a search needs from the model, measured once: the denoiser's guided output at every step of
uncached runs on the calibration prompts, and how much an error in that output moves the latents.

The guided output is ``uncond + guidance * (cond - uncond)`` (the conditional output alone without
CFG): what the pipeline hands the scheduler. Since the ``taylor`` kernel is linear in its sources,
forecasting each branch and then guiding equals forecasting the guided output, so one tensor per step
is enough. ``gain[s]`` is the scheduler's coefficient on the model output at step ``s`` (its
``step`` is affine in it: Euler's ``sigma_next - sigma``, DDIM's ``sqrt(1 - a_prev) sqrt(a) - sqrt(a_prev)
sqrt(1 - a)`` for v-prediction), probed on a copy of the scheduler; 1.0 where it cannot be probed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Callable, ClassVar, Sequence

import attrs
import torch

from ..adapter import adapter_for
from ..calibration import Observer, observed_run, pipeline_parts
from ..errors import EnableError
from ..policy import OnlineContext
from ..sites import Selector


@attrs.frozen(kw_only=True)
class _Recorder(Observer):
    """Computes the denoiser at every step and keeps each branch's output."""

    type_name: ClassVar[str] = "tune-recorder"

    sites: Selector = attrs.field(factory=lambda: Selector(kinds=("denoiser",)))
    #: (step, branch) -> the branch's output (float32, on the CPU).
    outputs: dict = attrs.field(factory=dict, eq=False, hash=False)

    def observe(self, context: OnlineContext, output: tuple) -> None:
        self.outputs[(context.step, context.branch)] = output[0].detach().float().cpu().clone()


@attrs.frozen(eq=False)
class Trajectory:
    """The guided denoiser output of every step, ``(num_steps, *shape)``, and each step's gain."""

    guided: torch.Tensor
    gains: tuple[float, ...]
    #: The uncached clips of the calibration prompts (the pipeline's output), to measure candidates against.
    reference: Any
    branches: tuple[str, ...]

    @property
    def num_steps(self) -> int:
        return self.guided.shape[0]


def guided_outputs(outputs: dict, num_steps: int, branches: Sequence[str], guidance: float) -> torch.Tensor:
    """``(num_steps, ...)``: per step, ``uncond + guidance * (cond - uncond)`` (the cond output alone
    when the run has one branch)."""
    steps = []
    for step in range(num_steps):
        cond = outputs[(step, "cond")]
        if "uncond" in branches:
            uncond = outputs[(step, "uncond")]
            cond = uncond + guidance * (cond - uncond)
        steps.append(cond)
    return torch.stack(steps)


def scheduler_gains(scheduler: Any, num_steps: int) -> tuple[float, ...]:
    """Per step, the scheduler step's coefficient on the model output, probed on copies of
    ``scheduler`` (which the run left with its timesteps set); 1.0 each where it cannot be probed."""
    try:
        timesteps = list(scheduler.timesteps)[:num_steps]
        gains = []
        for index, t in enumerate(timesteps):
            moved = []
            for value in (1.0, 0.0):
                probe = copy.deepcopy(scheduler)
                if hasattr(probe, "_step_index"):
                    probe._step_index = index  # a copy, placed at this step
                shape = (1, 1, 1, 1, 1)
                out = probe.step(torch.full(shape, value), t, torch.zeros(shape), return_dict=False)[0]
                moved.append(float(out.flatten()[0]))
            gains.append(abs(moved[0] - moved[1]))
        if len(gains) != num_steps or not all(g == g for g in gains):
            raise ValueError("timesteps do not match the run")
        return tuple(gains)
    except Exception:  # a scheduler whose step is not a pure function of one output: no weighting
        return (1.0,) * num_steps


def record(target: Any, call: Callable[[], Any], guidance: float, adapter: Any = None) -> Trajectory:
    """Run ``call()`` (one call of the pipeline ``target``, CFG scale ``guidance``) once, uncached, and
    return its trajectory; ``reference`` is what ``call`` returned."""
    model, pipe = pipeline_parts(target)
    chosen = adapter_for(model, adapter, pipe)
    recorder = _Recorder()
    run, output = observed_run(pipe, model, chosen, chosen.validate(), recorder, call)
    if run is None or not recorder.outputs:
        raise EnableError(f"the pipeline call ran no denoising step through {type(model).__name__}")
    branches = run.plan.branches
    guided = guided_outputs(recorder.outputs, run.plan.num_steps, branches, guidance)
    return Trajectory(guided, scheduler_gains(pipe.scheduler, run.plan.num_steps), output, branches)


def fingerprint(model: torch.nn.Module, pipe: Any, call_kwargs: dict[str, Any]) -> str:
    """A key for calibration data: the model's class, config and a sample of its weights, the
    scheduler's class and config, and the call's plain arguments (prompts, steps, guidance, shape, seed)."""
    def plain(value: Any) -> Any:
        if isinstance(value, torch.Generator):
            return f"generator:{value.initial_seed()}"
        if isinstance(value, torch.Tensor):
            return hashlib.sha256(value.detach().cpu().contiguous().float().numpy().tobytes()).hexdigest()
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):  # diffusers' private config keys (such as a set's listing) left out
            return {str(k): plain(v) for k, v in value.items() if not str(k).startswith("_")}
        return value if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__

    digest = hashlib.sha256()
    digest.update(json.dumps([type(model).__name__, plain(dict(getattr(model, "config", {}))),
                              type(pipe.scheduler).__name__, plain(dict(getattr(pipe.scheduler, "config", {}))),
                              plain(call_kwargs)], sort_keys=True, default=str).encode())
    for parameter in list(model.parameters())[:: max(1, len(list(model.parameters())) // 16)]:
        digest.update(parameter.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
