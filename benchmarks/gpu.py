"""cachekit on Wan 2.1 T2V 1.3B on a GPU: eager and torch.compile, uncached and cached, in a real denoising loop.

The transformer is a diffusers ``WanTransformer3DModel`` built from the published Wan 2.1 T2V 1.3B
config (nothing downloaded: random weights, seeded), in bfloat16 on the GPU. Each variant runs the
denoising loop ``WanPipeline`` runs, without its text encoder and VAE: 480x832 pixels (60x104
latents, VAE factor 8), 33 frames (9 latent frames), random text embeddings (1, 512, 4096) for the
prompt and the negative prompt, split CFG (one transformer call per branch per step, under
``transformer.cache_context("cond")`` / ``("uncond")``), guidance 5, and a
``FlowMatchEulerDiscreteScheduler`` stepping the latents. Run from the repository root:

    .venv/bin/python benchmarks/gpu.py [--steps 30] [--variants uncached,fast,fast+compile] [--repeats 1]
    .venv/bin/python benchmarks/gpu.py --device cpu --small      # CPU smoke run at a reduced size

Variants (``--list`` prints them): the uncached model, eager (the reference) and compiled
(``torch.compile`` of the whole transformer); each cachekit config (the presets ``quality``, ``fast``
and ``fastercache``, and the run-time policies ``first_block``, ``teacache``, ``easycache`` and
``seacache`` on the block stack) eager and compiled. cachekit drives the bare transformer:
``cachekit.enable(transformer, config, num_inference_steps=N, cfg=True, timesteps=...)``, then
``cachekit.disable(transformer)`` after the variant. A compiled cachekit variant compiles the
transformer with ``torch.compile`` after ``enable`` (or passes ``compile=True`` to ``enable`` where
``enable`` accepts it, ``--cachekit-compile``); a variant that raises is reported with its error.

Per variant: one untimed warm-up run (compilation, cachekit's plan and FLOP count happen there), then
``--repeats`` timed runs. Step times come from CUDA events (``time.perf_counter`` on CPU), the run's
total from ``time.perf_counter`` between two ``torch.cuda.synchronize()``; figures are medians over
the timed runs. Each run's process CPU time is kept too: on a shared CPU its ratio is the steadier
speedup (the CPU table shows both). Peak memory is ``torch.cuda.max_memory_allocated`` over the
timed runs (reset after the warm-up); cache bytes, the executed fraction of the uncached FLOPs and
the predicted speedup come from ``session.report()`` of the last timed run. The final latents are
compared with the uncached eager ones (relative L2, PSNR over the reference's range): with random
weights this is a sanity figure, not a quality measurement. Variants run one after the other, not
interleaved; the result files are rewritten after each variant, so a run cut short keeps what it
measured.

Writes ``<out>/gpu.json`` and ``<out>/gpu.md`` (default out: benchmarks/results/gpu-<device>) and prints
the table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cachekit  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine_info, machine_line, markdown_table, write_result  # noqa: E402

#: Wan 2.1 T2V 1.3B, the published transformer config (WanTransformer3DModel's parameter names).
WAN21_T2V_1_3B: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
#: The reduced size of the CPU smoke run: the same architecture, 2 layers of 2 heads x 16.
SMALL: dict[str, Any] = {**WAN21_T2V_1_3B, "num_attention_heads": 2, "attention_head_dim": 16, "text_dim": 32,
                         "freq_dim": 32, "ffn_dim": 64, "num_layers": 2}

#: The call each size runs: frames, pixel height and width, text tokens, steps.
FULL_CALL = {"frames": 33, "height": 480, "width": 832, "text_tokens": 512, "steps": 30}
SMALL_CALL = {"frames": 9, "height": 64, "width": 64, "text_tokens": 16, "steps": 10}
VAE_SPATIAL, VAE_TEMPORAL = 8, 4
GUIDANCE = 5.0
#: Wan 2.1's flow shift at 480p.
FLOW_SHIFT = 3.0
SEED = 0

BASELINE = "uncached"
COMPILED = "+compile"
#: cachekit's configs: the presets, and the run-time policies on the block stack that Wan runs
#: (settings from the grid of ``cachekit bench``). TeaCache measures its default signal, the first
#: block's input: the timestep embedding's changes (``modulated_input = "temb"``) come from the time
#: embedder's weights, random here, and are not a trained model's.
CONFIGS: dict[str, Any] = {
    "quality": "quality",
    "fast": "fast",
    "fastercache": "fastercache",
    "first_block": {"policy": [{"type": "first_block", "threshold": 0.1}]},
    "teacache": {"policy": [{"type": "teacache", "rel_l1_thresh": 0.1}]},
    "easycache": {"policy": [{"type": "easycache", "threshold": 0.1, "warmup": 3}]},
    "seacache": {"policy": [{"type": "seacache", "threshold": 0.5}]},
}


def variant_names() -> list[str]:
    """Every variant, in the order they run: the uncached reference first."""
    names = [BASELINE, BASELINE + COMPILED]
    for name in CONFIGS:
        names += [name, name + COMPILED]
    return names


def error_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200] if text else ''}"


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB over the reference's value range (the caller leaves it out when the two are equal)."""
    ref = ref.double()
    mse = (x.double() - ref).pow(2).mean().item()
    span = (ref.max() - ref.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(span * span / mse)


class StepClock:
    """Marks at step boundaries: CUDA events on a GPU (no synchronisation inside the loop),
    ``time.perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Seconds between consecutive marks (call after the loop's final synchronisation)."""
        if self.cuda:
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class Problem:
    """The model and the inputs every variant denoises: one transformer, the same noise and text."""

    def __init__(self, device: torch.device, dtype: torch.dtype, small: bool, steps: int | None, frames: int | None,
                 height: int | None, width: int | None) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

        call = dict(SMALL_CALL if small else FULL_CALL)
        call.update({k: v for k, v in {"steps": steps, "frames": frames, "height": height, "width": width}.items()
                     if v is not None})
        self.device, self.dtype, self.call = device, dtype, call
        self.config = dict(SMALL if small else WAN21_T2V_1_3B)
        torch.manual_seed(SEED)
        with torch.device(device):  # initialised where it runs: no 5 GB float32 copy on the host
            model = WanTransformer3DModel(**self.config)
        self.model = to_dtype(model, dtype).eval().requires_grad_(False)
        self.parameters = sum(p.numel() for p in self.model.parameters())
        latent_frames = (call["frames"] - 1) // VAE_TEMPORAL + 1
        self.latent_shape = (1, self.config["in_channels"], latent_frames, call["height"] // VAE_SPATIAL,
                             call["width"] // VAE_SPATIAL)
        p_t, p_h, p_w = self.config["patch_size"]
        self.tokens = latent_frames // p_t * (self.latent_shape[3] // p_h) * (self.latent_shape[4] // p_w)
        generator = torch.Generator(device).manual_seed(SEED)
        self.noise = torch.randn(self.latent_shape, generator=generator, device=device, dtype=torch.float32)
        text = (1, call["text_tokens"], self.config["text_dim"])
        self.prompt = torch.randn(text, generator=generator, device=device, dtype=torch.float32).to(dtype)
        self.negative = torch.randn(text, generator=generator, device=device, dtype=torch.float32).to(dtype)
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT)
        self.scheduler.set_timesteps(call["steps"], device=device)
        self.timesteps = [float(t) for t in self.scheduler.timesteps.tolist()]

    @property
    def steps(self) -> int:
        return self.call["steps"]

    def denoise(self, forward: Callable[..., Any], clock: StepClock) -> torch.Tensor:
        """WanPipeline's loop on ``forward`` (the transformer, compiled or not): the final latents."""
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(self.steps, device=self.device)
        sigmas = scheduler.sigmas.tolist()
        latents = self.noise.clone()
        model = self.model  # cache_context lives on the module itself, not on a compiled wrapper
        for i, t in enumerate(scheduler.timesteps):
            clock.mark()
            x = latents.to(self.dtype)
            timestep = t.expand(x.shape[0])
            where = {"step_index": i, "sigma": sigmas[i], "num_inference_steps": self.steps}
            with model.cache_context("cond", **where):
                cond = forward(hidden_states=x, timestep=timestep, encoder_hidden_states=self.prompt, return_dict=False)[0]
            with model.cache_context("uncond", **where):
                uncond = forward(hidden_states=x, timestep=timestep, encoder_hidden_states=self.negative,
                                 return_dict=False)[0]
            noise_pred = uncond + GUIDANCE * (cond - uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        clock.mark()
        return latents

    def timed_run(self, forward: Callable[..., Any]) -> tuple[torch.Tensor, float, list[float], float]:
        """One denoising run: final latents, total seconds, seconds of each step, process CPU seconds
        (less sensitive than wall time to other processes on a shared CPU)."""
        clock = StepClock(self.device)
        synchronize(self.device)
        cpu, start = time.process_time(), time.perf_counter()
        latents = self.denoise(forward, clock)
        synchronize(self.device)
        return latents, time.perf_counter() - start, clock.seconds(), time.process_time() - cpu


def to_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` in ``dtype``, its ``_keep_in_fp32_modules`` (Wan: rope, time embedder, modulation
    tables, norms) left in float32, as ``from_pretrained(torch_dtype=...)`` loads them."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not any(part in keep for part in name.split(".")):
            tensor.data = tensor.data.to(dtype)
    return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def enable_accepts_compile() -> bool:
    return "compile" in inspect.signature(cachekit.enable).parameters


@contextlib.contextmanager
def variant_setup(problem: Problem, name: str,
                  args: argparse.Namespace) -> Iterator[tuple[Callable[..., Any], Any, str | None]]:
    """The forward a variant calls, its cachekit session (None uncached) and how it is compiled;
    cachekit is disabled and dynamo's caches are dropped on exit."""
    compiled = name.endswith(COMPILED)
    config_name = name[: -len(COMPILED)] if compiled else name
    model = problem.model
    torch._dynamo.reset()  # each compiled variant compiles afresh (no recompile limit carried over)
    session, how = None, None
    try:
        if config_name != BASELINE:
            kwargs: dict[str, Any] = {"num_inference_steps": problem.steps, "cfg": True, "timesteps": problem.timesteps}
            if compiled and args.cachekit_compile == "enable":
                kwargs["compile"] = True
                how = "cachekit.enable(..., compile=True)"
            session = cachekit.enable(model, CONFIGS[config_name], **kwargs)
        forward: Callable[..., Any] = model
        if compiled and how is None:
            forward = torch.compile(model, backend=args.backend, mode=args.mode)
            how = f"torch.compile(transformer, backend={args.backend!r}" + (f", mode={args.mode!r})" if args.mode else ")")
        yield forward, session, how
    finally:
        if session is not None:
            cachekit.disable(model)
        torch._dynamo.reset()


def run_variant(problem: Problem, name: str, args: argparse.Namespace,
                reference: torch.Tensor | None) -> tuple[dict[str, Any], torch.Tensor | None]:
    """One variant's row (an ``error`` entry where it raised) and its final latents."""
    compiled = name.endswith(COMPILED)
    config_name = name[: -len(COMPILED)] if compiled else name
    row: dict[str, Any] = {"variant": name, "config": CONFIGS.get(config_name), "compiled": compiled, "compile": None}
    device, latents = problem.device, None
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with variant_setup(problem, name, args) as (forward, session, how):
                row["compile"] = how
                warm = [problem.timed_run(forward)[1] for _ in range(args.warmup)]
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                runs = [problem.timed_run(forward) for _ in range(args.repeats)]
                latents = runs[-1][0]
                totals = [run[1] for run in runs]
                steps = [statistics.median(s) for s in zip(*(run[2] for run in runs))]
                row.update(warmup_s=warm, total_s=statistics.median(totals), totals_s=totals, step_s=steps,
                           mean_step_s=statistics.median(totals) / problem.steps,
                           process_s=statistics.median(run[3] for run in runs),
                           peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                           finite=bool(torch.isfinite(latents).all()))
                if session is not None:
                    report = session.report()
                    row.update(measured_peak_cache_bytes=report.measured_peak_cache_bytes,
                               measured_peak_held_bytes=report.measured_peak_held_bytes,
                               compute_fraction=getattr(report, "compute_fraction", None),
                               predicted_speedup=report.predicted_speedup, executed=report.counts())
    except Exception as err:  # reported in its row; the next variant runs
        row["error"] = error_line(err)
        latents = None
    messages = sorted({str(w.message).splitlines()[0][:200] for w in caught})
    if messages:
        row["warnings"] = messages
    if latents is not None:
        ref = latents if reference is None else reference  # the reference's own row compares with itself
        equal = bool(torch.equal(latents, ref))
        row.update(rel_l2=rel_l2(latents, ref), psnr_db=None if equal else psnr(latents, ref), bitwise_equal=equal)
    return row, latents


def gpu_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {}
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "gpu_memory_bytes": props.total_memory, "cuda": torch.version.cuda,
            "capability": f"{props.major}.{props.minor}"}


COLUMNS = (
    ("variant", "variant", ""),
    ("total s", "total_s", ".3f"),
    ("s/step", "mean_step_s", ".4f"),
    ("speedup", "speedup", ".2f"),
    ("warm-up s", "warmup", ".2f"),
    ("peak mem GiB", "peak_gib", ".2f"),
    ("cache MiB", "cache_mib", ".2f"),
    ("compute fraction", "compute_fraction", ".3f"),
    ("rel L2", "rel_l2", ".2e"),
    ("PSNR dB", "psnr_db", ".1f"),
    ("error", "error", ""),
)


def table(rows: list[dict[str, Any]], cpu: bool = False) -> str:
    """The markdown table; ``cpu``: with the speedup in process CPU time beside the wall-time one."""
    shown = []
    for row in rows:
        cache = row.get("measured_peak_cache_bytes")
        peak = row.get("peak_memory_bytes")
        shown.append({**row, "warmup": row["warmup_s"][0] if row.get("warmup_s") else None,
                      "cache_mib": cache / 2**20 if cache is not None else None,
                      "peak_gib": peak / 2**30 if peak is not None else None,
                      "error": f"`{row['error']}`" if row.get("error") else None})
    columns = COLUMNS[:4] + (("speedup (CPU time)", "process_speedup", ".2f"),) + COLUMNS[4:] if cpu else COLUMNS
    return markdown_table(shown, columns)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", default=None,
                      help="reduced size (2 layers, 2 heads x 16, 9 frames, 64x64, 10 steps, float32); the default on CPU")
    size.add_argument("--full", dest="small", action="store_false", help="Wan 2.1 1.3B at 480p even on CPU")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 30; 10 small)")
    parser.add_argument("--frames", type=int, default=None, help="video frames (default 33; 9 small)")
    parser.add_argument("--height", type=int, default=None, help="pixel height (default 480; 64 small)")
    parser.add_argument("--width", type=int, default=None, help="pixel width (default 832; 64 small)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="model dtype (default bfloat16 on a GPU at full size, else float32)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated variants to run (default all; {BASELINE!r} always runs first)")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per variant (default 1, at least 1)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per variant (default 1)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--mode", default=None, help="torch.compile mode (default none)")
    parser.add_argument("--cachekit-compile", choices=("auto", "wrap", "enable"), default="auto",
                        help="compiled cachekit variants: torch.compile the transformer after enable (wrap), pass "
                             "compile=True to cachekit.enable (enable), or enable when it accepts it (auto, default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results/gpu-<device>)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.repeats < 1:
        parser.error("--warmup and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        print("\n".join(variant_names()))
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    small = args.small if args.small is not None else device.type != "cuda"
    if device.type == "cpu" or args.threads is not None:
        torch.set_num_threads(args.threads or 1)
    low = device.type == "cuda" and not small
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if low else torch.float32)
    if args.cachekit_compile == "auto":
        args.cachekit_compile = "enable" if enable_accepts_compile() else "wrap"
    names = variant_names()
    if args.variants:
        wanted = [n.strip() for n in args.variants.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {names}")
        names = [BASELINE] + [n for n in names if n in wanted and n != BASELINE]
    out = Path(args.out) if args.out else RESULTS_DIR / f"gpu-{device.type}"

    problem = Problem(device, dtype, small, args.steps, args.frames, args.height, args.width)
    info = {**machine_info(), **gpu_info(device)}
    payload: dict[str, Any] = {
        "benchmark": "gpu",
        "machine": info,
        "parameters": {
            "device": str(device), "dtype": str(dtype).removeprefix("torch."), "small": small,
            "model": "WanTransformer3DModel, " + ("reduced Wan 2.1 config" if small else "Wan 2.1 T2V 1.3B config")
                     + ", random weights (seed 0)",
            "model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in problem.config.items()},
            "parameters": problem.parameters, **problem.call, "latent_shape": list(problem.latent_shape),
            "video_tokens": problem.tokens, "guidance": GUIDANCE, "cfg": "split (cond then uncond call per step)",
            "scheduler": f"FlowMatchEulerDiscreteScheduler(shift={FLOW_SHIFT})", "warmup": args.warmup,
            "repeats": args.repeats, "backend": args.backend, "mode": args.mode,
            "cachekit_compile": args.cachekit_compile, "enable_accepts_compile": enable_accepts_compile(),
            "baseline": BASELINE,
            "timing": "per variant: warm-up run(s) untimed, then timed runs; medians over timed runs; variants in sequence",
        },
        "variants": [],
    }
    print(f"{payload['parameters']['model']}: {problem.parameters / 1e6:.1f} M parameters, latents "
          f"{list(problem.latent_shape)} ({problem.tokens} video tokens), {problem.steps} steps, split CFG, "
          f"{payload['parameters']['dtype']} on {device}", file=sys.stderr, flush=True)

    reference: torch.Tensor | None = None
    rows: list[dict[str, Any]] = payload["variants"]
    path = out / "gpu.json"
    eager: dict[str, tuple[dict[str, Any], torch.Tensor]] = {}  # each eager variant's row and latents
    for name in names:
        row, latents = run_variant(problem, name, args, reference)
        if latents is not None and not row["compiled"]:
            eager[name] = (row, latents)
        twin = eager.get(name.removesuffix(COMPILED)) if row["compiled"] else None
        if twin is not None and latents is not None:  # compiled against eager, the same config
            row["rel_l2_vs_eager"] = rel_l2(latents, twin[1])
            if "executed" in row:
                row["same_decisions_as_eager"] = row["executed"] == twin[0]["executed"]
        if name == BASELINE:
            reference = latents
            if latents is None:  # without the reference nothing compares
                rows.append(row)
                write_result("gpu", payload, out)
                print(f"{BASELINE}: {row['error']}", file=sys.stderr)
                return 1
        base = rows[0].get("total_s") if rows else row.get("total_s")
        if row.get("total_s"):
            row["speedup"] = base / row["total_s"]
            row["process_speedup"] = (rows[0] if rows else row)["process_s"] / row["process_s"]
        rows.append(row)
        path = write_result("gpu", payload, out)
        summary = (f"error: {row['error']}" if "error" in row else
                   f"{row['total_s']:.3f} s, {row['speedup']:.2f}x, warm-up {row['warmup_s'][0]:.2f} s")
        print(f"{name}: {summary}", file=sys.stderr, flush=True)

    heading = (f"## cachekit on {'a reduced ' if small else ''}Wan 2.1 T2V 1.3B ({problem.steps} steps, "
               f"{problem.call['frames']} frames {problem.call['height']}x{problem.call['width']}, split CFG, "
               f"{payload['parameters']['dtype']}, {device.type})")
    machine = machine_line(info) + (f", {info['gpu']}, CUDA {info['cuda']}" if "gpu" in info else "")
    text = f"{heading}\n\n{table(rows, cpu=device.type == 'cpu')}\n\nmachine: {machine}\n"
    (out / "gpu.md").write_text(text)
    print(text)
    print(f"wrote {path} and {out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
