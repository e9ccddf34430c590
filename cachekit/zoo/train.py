"""Train the embedded moving-shapes model: ``python -m cachekit.zoo.train --out runs/moving-shapes``.

Seeded and resumable: every ``--checkpoint-minutes`` the model, its EMA, the optimiser, the step
and the random state go to ``<out>/checkpoint.pt``; running the same command again continues from
there (raise ``--steps`` to train longer). ``--export`` writes the EMA weights where
:func:`cachekit.zoo.load` finds them.

Recipe: v-prediction on a zero-terminal-SNR linear schedule, noise levels drawn with extra weight
on the low and middle levels (on this schedule t > 650 is nearly pure noise; the layout is decided
below), 10% of prompts dropped to the empty
prompt so classifier-free guidance has an unconditional model to contrast with, AdamW with warm-up
and cosine decay, EMA of the weights.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from . import moving_shapes as world
from .weights import build_pipeline, export, weights_path


def _models(model: str = "moving-shapes") -> tuple[torch.nn.Module, torch.nn.Embedding]:
    if model == "moving-shapes-wan":
        from diffusers import WanTransformer3DModel

        transformer = WanTransformer3DModel(**world.wan_transformer_config())
    else:
        from diffusers import LatteTransformer3DModel

        transformer = LatteTransformer3DModel(**world.transformer_config())
    words = torch.nn.Embedding(len(world.VOCABULARY) + 1, world.EMBED_DIM, padding_idx=0)
    return transformer, words


class _VPrediction:
    """The Latte model's noising: v-prediction on the zero-terminal-SNR DDIM schedule, integer t."""

    def __init__(self, args: argparse.Namespace) -> None:
        from diffusers import DDIMScheduler

        self.args = args
        self.alphas = DDIMScheduler(**world.scheduler_config()).alphas_cumprod.float()

    def noise(self, clips: torch.Tensor, data: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(noisy, timestep, target)`` for a batch of clean clips."""
        t = (torch.rand(clips.shape[0], generator=data) ** self.args.noise_power * 1000).long().clamp(max=999)
        noise = torch.randn(clips.shape, generator=data)
        a = self.alphas[t].sqrt().view(-1, 1, 1, 1, 1)
        s = (1 - self.alphas[t]).sqrt().view(-1, 1, 1, 1, 1)
        return a * clips + s * noise, t, a * noise - s * clips

    @staticmethod
    def predict(transformer: torch.nn.Module, noisy: torch.Tensor, embeds: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return transformer(hidden_states=noisy, encoder_hidden_states=embeds, timestep=t, return_dict=False)[0][:, :3]


class _RectifiedFlow:
    """The Wan model's noising: ``x_t = (1 - s) x0 + s noise`` with the velocity ``noise - x0`` as
    target; ``s`` logit-normal, then shifted as the sampler's schedule is; timestep ``1000 s`` (float),
    as ``FlowMatchEulerDiscreteScheduler`` passes it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.shift = world.flow_scheduler_config()["shift"]

    def noise(self, clips: torch.Tensor, data: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u = torch.sigmoid(torch.randn(clips.shape[0], generator=data) * self.args.logit_std + self.args.logit_mean)
        sigma = self.shift * u / (1 + (self.shift - 1) * u)
        noise = torch.randn(clips.shape, generator=data)
        s = sigma.view(-1, 1, 1, 1, 1)
        return (1 - s) * clips + s * noise, sigma * 1000, noise - clips

    @staticmethod
    def predict(transformer: torch.nn.Module, noisy: torch.Tensor, embeds: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return transformer(hidden_states=noisy, encoder_hidden_states=embeds, timestep=t, return_dict=False)[0]


def _objective(args: argparse.Namespace) -> _VPrediction | _RectifiedFlow:
    return _RectifiedFlow(args) if args.model == "moving-shapes-wan" else _VPrediction(args)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    transformer, words = _models(args.model)
    params = [*transformer.parameters(), *words.parameters()]
    ema = [p.detach().clone() for p in params]
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    data = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        if state.get("model", "moving-shapes") != args.model:
            raise SystemExit(f"{checkpoint} holds {state['model']!r}, not {args.model!r}")
        transformer.load_state_dict(state["transformer"])
        words.load_state_dict(state["words"])
        optimiser.load_state_dict(state["optimiser"])
        ema = state["ema"]
        step = state["step"]
        data.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {checkpoint} at step {step}", flush=True)
    objective = _objective(args)
    transformer.train()

    def save() -> None:
        state = {"transformer": transformer.state_dict(), "words": words.state_dict(), "optimiser": optimiser.state_dict(),
                 "ema": ema, "step": step, "data_rng": data.get_state(), "torch_rng": torch.get_rng_state(), "model": args.model}
        torch.save(state, checkpoint.with_suffix(".tmp"))
        os.replace(checkpoint.with_suffix(".tmp"), checkpoint)

    last_save, began, losses = time.time(), time.time(), []
    until = min(args.until or args.steps, args.steps)
    while step < until:
        clips, prompts = world.random_batch(args.batch, data)
        ids = world.token_ids(prompts)
        ids[torch.rand(args.batch, generator=data) < args.drop] = 0  # the empty prompt
        noisy, t, target = objective.noise(clips, data)
        prediction = objective.predict(transformer, noisy, world.embed(ids, words.weight), t)
        loss = F.mse_loss(prediction, target)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / args.steps, 1.0))))
        for group in optimiser.param_groups:
            group["lr"] = lr
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            rate = (time.time() - began) / len(losses)
            print(f"step {step} loss {sum(losses[-50:]) / 50:.4f} lr {lr:.2e} {rate:.2f} s/step", flush=True)
        if time.time() - last_save > args.checkpoint_minutes * 60:
            save()
            last_save = time.time()
    save()
    print(f"checkpointed at step {step} of {args.steps}", flush=True)


def export_ema(args: argparse.Namespace) -> None:
    """Load the EMA weights of ``<out>/checkpoint.pt`` into the models and write the package's weights."""
    state = torch.load(Path(args.out) / "checkpoint.pt", weights_only=True)
    model = state.get("model", "moving-shapes")
    transformer, words = _models(model)
    params = [*transformer.parameters(), *words.parameters()]
    with torch.no_grad():
        for p, e in zip(params, state["ema"]):
            p.copy_(e)
    path = export(transformer, words, {"training_steps": state["step"]}, Path(args.weights or weights_path(model)),
                  model=model)
    build_pipeline(path)  # loads back
    print(f"wrote {path} (EMA weights at step {state['step']})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="moving-shapes", choices=("moving-shapes", "moving-shapes-wan"))
    parser.add_argument("--out", help="checkpoint folder (resumed from if present; default runs/<model>)")
    parser.add_argument("--steps", type=int, default=5500, help="length of the run (sets the learning-rate decay)")
    parser.add_argument("--until", type=int, help="stop (and checkpoint) at this step; run again to continue")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--drop", type=float, default=0.1, help="fraction of prompts replaced by the empty prompt")
    parser.add_argument("--noise-power", type=float, default=1.5,
                        help="t = 1000 * u**power: above 1 puts more samples at the low and middle noise levels "
                             "where a zero-terminal-SNR schedule decides the layout (SNR 1 at t~270, 0.01 at t~650)")
    parser.add_argument("--logit-mean", type=float, default=0.8,
                        help="moving-shapes-wan: noise level s = shift(sigmoid(N(mean, std))); above 0 favours more "
                             "noise, where the square's path is decided (default 0.8: at 0 the model learned no motion)")
    parser.add_argument("--logit-std", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--export", action="store_true", help="write the checkpoint's EMA weights into the package")
    parser.add_argument("--weights", help="where --export writes (default: the package's file for --model)")
    args = parser.parse_args(argv)
    args.out = args.out or f"runs/{args.model}"
    export_ema(args) if args.export else train(args)


if __name__ == "__main__":
    main()
