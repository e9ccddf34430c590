"""``cachekit bench``: a grid of cachekit policies and outside peers on one model, measured alike.

Every row runs on its own copy of the pipeline (same weights), on the same prompts and seeds; the
timed runs go round-robin over the rows (interleaved, so a busy machine slows them alike). Per row:
compute fraction (FLOPs of one run against the uncached run's, counted by torch), predicted
speedup (cachekit's cost model), measured speedup (median), efficiency (measured / predicted),
PSNR and SSIM against the uncached clips (mean over clips), the prompt-following rate (colour and
direction right), and the peak bytes the cache held. A peer that raises is a row with its error;
a peer that does not apply to the pipeline (diffusers' FasterCache on a pipeline that calls the
transformer separately for cond and uncond) is a row with the reason it was skipped.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import torch

from .evaluate import Job, psnr, ssim
from .front import IDENTICAL_DB, budget_markdown, budget_table, dominance, dominance_markdown, family

#: cachekit rows: (name, config).
POLICY_GRID: tuple[tuple[str, Any], ...] = (
    ("reuse", "reuse"),
    ("pab", "pab"),
    ("step_reuse interval 2", {"policy": [{"type": "step_reuse", "interval": 2}]}),
    ("step_reuse interval 3", {"policy": [{"type": "step_reuse", "interval": 3}]}),
    ("step_reuse interval 4", {"policy": [{"type": "step_reuse", "interval": 4}]}),
    ("fastercache (policy alone)", {"policy": [{"type": "fastercache"}]}),
    ("cfg_cache (policy alone)", {"policy": [{"type": "cfg_cache"}]}),
    ("preset quality", "quality"),
    ("preset fast", "fast"),
    ("preset fastercache", "fastercache"),
    ("aggressive: fastercache + cfg_cache from 0.2", {"policy": [
        {"type": "fastercache", "window": {"start": 0.2, "end": 1.0}},
        {"type": "cfg_cache", "window": {"start": 0.2, "end": 1.0}}]}),
    ("aggressive: fastercache interval 3 + cfg_cache from 0.2", {"policy": [
        {"type": "fastercache", "window": {"start": 0.2, "end": 1.0}, "interval": 3},
        {"type": "cfg_cache", "window": {"start": 0.2, "end": 1.0}}]}),
)


@attrs.define
class Row:
    """One line of the bench: how to switch a method on for a pipeline copy, and what it measured."""

    name: str
    source: str  # "uncached", "cachekit" or the peer's package
    setup: Callable[[Any], Any]
    pipe: Any = None
    handle: Any = None
    error: str | None = None
    skipped: str | None = None
    seconds: list[float] = attrs.Factory(list)
    clips: dict[int, torch.Tensor] = attrs.Factory(dict)
    flops: float = 0.0
    peak_bytes: int | None = None


def _cachekit(config: Any) -> Callable[[Any], Any]:
    def setup(pipe: Any) -> Any:
        from .api import enable

        return enable(pipe, config(pipe) if isinstance(config, (Calibrated, TunedPlans)) else config, profile=True)

    return setup


def _diffusers(make: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def setup(pipe: Any) -> Any:
        pipe.transformer.enable_cache(make(pipe))

    return setup


def _magcache_calibrated(job: Job, seed: int, steps: int, threshold: float = 0.06) -> Callable[[Any], Any]:
    """diffusers' MagCache in its calibrate mode: one run records this model's magnitude ratios,
    which the row then runs with."""

    def setup(pipe: Any) -> Any:
        from diffusers import MagCacheConfig
        from diffusers.hooks import HookRegistry

        # one step more than the run: diffusers clears the ratios when the count is reached, and the
        # pipeline resets the hooks' state when it returns, so they are read at each step's end
        pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps + 1))
        ratios = None

        def read(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
            nonlocal ratios
            for module in pipe.transformer.modules():
                registry = getattr(module, "_diffusers_hook", None)
                for hook in (registry.hooks.values() if isinstance(registry, HookRegistry) else ()):
                    manager = getattr(hook, "state_manager", None)
                    for state in (getattr(manager, "_state_cache", {}) or {}).values():
                        ratios = list(getattr(state, "calibration_ratios", None) or ()) or ratios
            return {}

        job.generate(pipe, job.prompts[:1], seed, callback_on_step_end=read)
        pipe.transformer.disable_cache()
        if not ratios:
            raise RuntimeError("calibration recorded no magnitude ratios")
        pipe.transformer.enable_cache(MagCacheConfig(mag_ratios=list(ratios), num_inference_steps=steps,
                                                     threshold=threshold))

    return setup


def _cache_dit(**settings: Any) -> Callable[[Any], Any]:
    """cache-dit's DBCache with ``settings`` over its defaults (F8B0, threshold 0.08, 8 warm-up steps)."""

    def setup(pipe: Any) -> None:
        import cache_dit

        cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(**settings))

    return setup


#: Pipelines that call the transformer twice a step, for cond then uncond, instead of once on a
#: batch holding both.
SPLIT_CFG_PIPELINES = ("WanPipeline", "HunyuanVideoPipeline")


def peer_rows(job: Job, steps: int, seed: int) -> list[Row]:
    """diffusers' own caches (their documented settings, timesteps read from the pipeline) and
    cache-dit's DBCache."""
    import diffusers

    def now(pipe: Any) -> Callable[[], Any]:
        return lambda: pipe.current_timestep

    split_cfg = type(job.pipe).__name__ in SPLIT_CFG_PIPELINES
    rows = [
        Row("diffusers FasterCache", "diffusers", _diffusers(lambda pipe: diffusers.FasterCacheConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
            current_timestep_callback=now(pipe), attention_weight_callback=lambda _: 0.3,
            unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 781),
            spatial_attention_block_identifiers=["transformer_blocks"],
            temporal_attention_block_identifiers=["temporal_transformer_blocks"], tensor_format="BCFHW")),
            skipped=f"does not apply: it takes the uncond half of a batched-CFG call, and {type(job.pipe).__name__} "
                    "calls the transformer separately for cond and uncond" if split_cfg else None),
        Row("diffusers PAB", "diffusers", _diffusers(lambda pipe: diffusers.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, temporal_attention_block_skip_range=4,
            cross_attention_block_skip_range=6, spatial_attention_timestep_skip_range=(100, 800),
            temporal_attention_timestep_skip_range=(100, 800), cross_attention_timestep_skip_range=(100, 800),
            current_timestep_callback=now(pipe)))),
        *(Row(f"diffusers FirstBlockCache threshold {t}", "diffusers",
              _diffusers(lambda pipe, t=t: diffusers.FirstBlockCacheConfig(threshold=t))) for t in FBC_THRESHOLDS),
        Row("diffusers TaylorSeer", "diffusers", _diffusers(lambda pipe: diffusers.TaylorSeerCacheConfig(
            taylor_factors_dtype=torch.float32))),
        Row("diffusers TaylorSeer (lite)", "diffusers", _diffusers(lambda pipe: diffusers.TaylorSeerCacheConfig(
            taylor_factors_dtype=torch.float32, use_lite_mode=True))),
        *(Row(f"diffusers MagCache (calibrated) threshold {t}", "diffusers", _magcache_calibrated(job, seed, steps, t))
          for t in MAGCACHE_THRESHOLDS),
        *(Row(f"diffusers SeaCache threshold {t}", "diffusers",
              _diffusers(lambda pipe, t=t: diffusers.SeaCacheConfig(threshold=t))) for t in SEACACHE_THRESHOLDS),
        Row("cache-dit DBCache (defaults: F8B0, threshold 0.08)", "cache-dit", _cache_dit()),
        *(Row(f"cache-dit DBCache F1B0 threshold {t}", "cache-dit",
              _cache_dit(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=t))
          for t in DBCACHE_THRESHOLDS),
    ]
    return rows


#: The peers' thresholds the bench sweeps: their defaults and looser settings.
FBC_THRESHOLDS = (0.05, 0.1, 0.2, 0.3)
MAGCACHE_THRESHOLDS = (0.06, 0.12, 0.24)
SEACACHE_THRESHOLDS = (0.25, 0.5, 1.0)
DBCACHE_THRESHOLDS = (0.08, 0.12, 0.2)


#: The FLOPs budgets the bench tunes plans for.
TUNED_BUDGETS = (0.35, 0.5, 0.65)


def tuned_grid(job: Job) -> list[tuple[str, Any]]:
    """Plans ``cachekit tune`` finds for the bench's budgets (see :class:`TunedPlans`)."""
    plans = TunedPlans(job)
    return [(f"tuned budget {b}", attrs.evolve(plans, budget=b)) for b in TUNED_BUDGETS]


@attrs.frozen
class TunedPlans:
    """A ``tuned`` row's config: tuned when the first such row is set up, for every budget at once, on
    the job's first eight prompts at seed 1000 (so none of the bench's clips, seeds 0.., was seen)."""

    job: Job
    budget: float = 0.0
    found: dict = attrs.field(factory=dict, eq=False, hash=False)  # shared by the rows made with evolve

    def __call__(self, pipe: Any) -> Any:
        import tempfile

        from .tuning import tune_job

        if not self.found:
            with tempfile.TemporaryDirectory() as cache:
                tuned = tune_job(self.job, budget=TUNED_BUDGETS, cache_dir=cache, progress=lambda line: None)
            self.found.update({float(name.split()[-1]): config for name, config in tuned.configs.items()})
        return self.found[self.budget]


def adaptive_grid(job: Job) -> list[tuple[str, Any]]:
    """cachekit's step-level policies on the block stack, each swept over its threshold or interval;
    MagCache's ratios are calibrated on the job's first prompt (see :class:`Calibrated`)."""
    grid: list[tuple[str, Any]] = []
    grid += [(f"first_block threshold {t}", {"policy": [{"type": "first_block", "threshold": t}]})
             for t in (0.05, 0.1, 0.2, 0.3, 0.4)]
    grid += [(f"first_block threshold {t} order {k}", {"policy": [{"type": "first_block", "threshold": t, "order": k}]})
             for k in (1, 2) for t in (0.1, 0.2, 0.3, 0.5)]
    grid += [(f"magcache threshold {t}", Calibrated(job, {"threshold": t, "max_skips": 4}))
             for t in (0.06, 0.12, 0.24, 0.5)]
    grid += [(f"easycache threshold {t}", {"policy": [{"type": "easycache", "threshold": t, "warmup": 3}]})
             for t in (0.05, 0.1, 0.2, 0.4)]
    grid += [(f"teacache threshold {t}", {"policy": [{"type": "teacache", "rel_l1_thresh": t}]})
             for t in (0.05, 0.1, 0.2, 0.4)]
    grid += [(f"seacache threshold {t}", {"policy": [{"type": "seacache", "threshold": t}]}) for t in (0.25, 0.5, 1.0, 2.0)]
    grid += [(f"taylorseer interval {n}", {"policy": [{"type": "taylorseer", "interval": n}]}) for n in (2, 3, 5)]
    grid += [(f"taylorseer lite interval {n}", {"policy": [{"type": "taylorseer", "interval": n, "lite": True}]})
             for n in (2, 3, 5)]
    return grid


@attrs.frozen
class Calibrated:
    """A ``magcache`` row's config: its ratios measured by ``cachekit.calibrate`` on the job's first
    prompt (seed 0) when the row is set up, then ``settings`` on top."""

    job: Job
    settings: dict

    def __call__(self, pipe: Any) -> Any:
        from .calibration import calibrate

        if self.job.call_kwargs is None:
            raise RuntimeError("this job cannot calibrate: it does not expose its pipeline call")
        entry = dict(calibrate(pipe, **self.job.call_kwargs(self.job.prompts[:1], 0)).to_dict()["policy"][0])
        return {"policy": [{**entry, **self.settings}]}


def held_bytes(model: torch.nn.Module, session: Any) -> int:
    """Bytes of tensors a cache holds right now: cachekit's run store, or whatever tensors the
    diffusers hooks on ``model`` keep in their state (found by walking their attributes)."""
    if session is not None and getattr(session, "runtime", None) is not None and session.runtime.run is not None:
        return session.runtime.run.bytes
    from diffusers.hooks import HookRegistry

    seen: set[int] = set()

    def walk(value: Any, depth: int) -> int:
        if isinstance(value, torch.Tensor):
            if value.data_ptr() in seen or isinstance(value, torch.nn.Parameter):
                return 0
            seen.add(value.data_ptr())
            return value.nbytes
        if depth == 0 or isinstance(value, (str, bytes, int, float, torch.nn.Module)) or callable(value) and not hasattr(value, "__dict__"):
            return 0
        if isinstance(value, dict):
            return sum(walk(v, depth - 1) for v in value.values())
        if isinstance(value, (list, tuple, set)):
            return sum(walk(v, depth - 1) for v in value)
        return sum(walk(v, depth - 1) for v in getattr(value, "__dict__", {}).values())

    total = 0
    for module in model.modules():
        registry = module.__dict__.get("_diffusers_hook")
        if isinstance(registry, HookRegistry):
            total += sum(walk(hook, 5) for hook in registry.hooks.values())
    return total


def _first_run(job: Job, row: Row, prompts: Sequence[str], seed: int) -> None:
    """The untimed warm-up run: its clips, its FLOPs, and the most bytes the cache held at a step's end."""
    from .cost import flop_counter

    peak = 0

    def watch(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        nonlocal peak
        peak = max(peak, held_bytes(pipe.transformer, row.handle))
        return {}

    with flop_counter() as counter:
        row.clips[seed] = job.generate(row.pipe, prompts, seed, callback_on_step_end=watch)
    row.flops = counter.get_total_flops()
    row.peak_bytes = peak


def run_bench(job: Job, steps: int, seeds: Sequence[int], repeats: int, peers: bool = True,
              grid: Sequence[tuple[str, Any]] | None = None, progress: Callable[[str], None] = print,
              only: Sequence[str] = ()) -> list[dict]:
    """Measure every row; returns one dict per row (the uncached row first). ``repeats = 0`` measures
    FLOPs and quality only (no timed rounds). ``grid``: the cachekit rows (default: the policy grid,
    the run-time policies' sweeps and the tuned plans). ``only``: shell patterns; the rows named by none are left out
    (the uncached row stays)."""
    grid = [*POLICY_GRID, *adaptive_grid(job), *tuned_grid(job)] if grid is None else grid
    from .zoo import moving_shapes

    prompts = list(job.prompts)
    rows = [Row("uncached", "uncached", lambda pipe: None)]
    rows += [Row(name, "cachekit", _cachekit(config)) for name, config in grid]
    if peers:
        rows += peer_rows(job, steps, seeds[0])
    if only:
        rows = rows[:1] + [r for r in rows[1:] if any(fnmatch.fnmatchcase(r.name, p) for p in only)]
    for row in rows:
        if row.skipped:
            progress(f"  {row.name}: skipped ({row.skipped})")
            continue
        row.pipe = copy.deepcopy(job.pipe)
        try:
            row.handle = row.setup(row.pipe)
        except Exception as err:
            row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}" if str(err) else type(err).__name__
            progress(f"  {row.name}: refused ({row.error})")
    live = [r for r in rows if r.error is None and r.skipped is None]
    # progress from the first second: every generation is counted, with an estimate of the time left
    # A warm-up keeps planning and profiling out of the timed rounds and the FLOPs (counted on the last
    # seed's untimed run); without timed rounds a second seed does that.
    warm = 1 if repeats or len(seeds) == 1 else 0
    total = len(live) * (warm + len(seeds) * (1 + repeats))
    count = {"done": 0, "total": total, "start": time.perf_counter()}
    progress(f"{len(live)} rows x {len(seeds)} seeds: {total} generations of {len(prompts)} clips "
             f"({'a warm-up, ' if warm else ''}an untimed run and {repeats} timed per row and seed)")

    def done(what: str) -> None:
        count["done"] += 1
        elapsed = time.perf_counter() - count["start"]
        left = elapsed / count["done"] * max(count["total"] - count["done"], 0)
        progress(f"[{count['done']}/{count['total']}] {what} ({elapsed:.0f} s so far, about {left / 60:.1f} min left)")

    for index, seed in enumerate(seeds):
        for row in live:
            if row.error is None:
                pending = 1 + warm if index == 0 else 1  # this seed's warm-up and untimed run, not yet done
                try:
                    if index == 0 and warm:  # warm-up: a cachekit session plans and profiles the model here
                        job.generate(row.pipe, prompts, seed)
                        pending -= 1
                        done(f"{row.name}: warm-up")
                    _first_run(job, row, prompts, seed)
                    pending -= 1
                    done(f"{row.name}: seed {seed}, untimed run")
                except Exception as err:
                    row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}" if str(err) else type(err).__name__
                    progress(f"  {row.name}: failed ({row.error})")
                    count["total"] -= pending + repeats + (len(seeds) - index - 1) * (1 + repeats)  # its generations left
        live = [r for r in live if r.error is None]
        for round_ in range(repeats):
            progress(f"seed {seed}, timed round {round_ + 1}/{repeats} over {len(live)} rows")
            for row in live:
                start = time.perf_counter()
                job.generate(row.pipe, prompts, seed)
                row.seconds.append(time.perf_counter() - start)
                done(f"{row.name}: seed {seed}, timed round {round_ + 1}/{repeats}")
    base = rows[0]
    results = []
    for row in rows:
        entry: dict[str, Any] = {"name": row.name, "source": row.source, "error": row.error, "skipped": row.skipped}
        if row.error is None and row.skipped is None:
            seconds = statistics.median(row.seconds) if row.seconds else None
            report = row.handle.report() if row.source == "cachekit" else None
            predicted = report.predicted_speedup if report is not None else (1.0 if row is base else None)
            measured = statistics.median(base.seconds) / seconds if seconds else None
            clips = torch.cat([row.clips[s] for s in seeds])
            reference = torch.cat([base.clips[s] for s in seeds])
            per_clip = [psnr(r[None], c[None]) for r, c in zip(reference, clips)]
            verdicts = [moving_shapes.judge(c * 2 - 1, p) for c, p in zip(clips, prompts * len(seeds))]
            entry.update(
                compute_fraction=row.flops / base.flops if base.flops else None,
                predicted_speedup=predicted,
                measured_speedup=measured,
                efficiency=measured / predicted if predicted and measured else None,
                psnr=statistics.fmean(min(p, IDENTICAL_DB) for p in per_clip),
                ssim=ssim(reference, clips),
                prompt_following=statistics.fmean(v["colour"] and v["direction"] for v in verdicts),
                rates={k: statistics.fmean(v[k] for v in verdicts) for k in moving_shapes.TESTS},
                peak_cache_bytes=report.measured_peak_cache_bytes if report is not None else row.peak_bytes,
                decide_ms_per_step=report.decide_seconds / report.num_steps * 1e3 if report is not None and report.decisions else None,
                predicted_psnr=(row.handle.config.tuned or {}).get("predicted_psnr") if row.source == "cachekit" else None,
                seconds=seconds,
            )
        results.append(entry)
    return results


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    """``value`` formatted with its unit, or "n/a" where the row has none (a peer's prediction)."""
    return "n/a" if value is None else format(value, spec) + unit


def markdown(results: Sequence[dict], title: str) -> str:
    """The rows' table, then the dominance table: each peer point against cachekit's rows."""
    lines = [f"### {title}", "",
             "| row | source | compute fraction | predicted | measured | efficiency | PSNR dB | SSIM | prompt-following | peak cache "
             "| decide ms/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["error"] or r.get("skipped"):
            what = f"error: {r['error']}" if r["error"] else f"skipped: {r['skipped']}"
            lines.append(f"| {r['name']} | {r['source']} | {what} |||||||||")
            continue
        psnr_text = "∞ (identical)" if r["psnr"] >= 100 else f"{r['psnr']:.2f}"
        lines.append(
            f"| {r['name']} | {r['source']} | {_fmt(r['compute_fraction'], '.3f')} | {_fmt(r['predicted_speedup'], '.2f', 'x')} | "
            f"{_fmt(r['measured_speedup'], '.2f', 'x')} | {_fmt(r['efficiency'], '.2f')} | {psnr_text} | {r['ssim']:.4f} | "
            f"{_fmt(r['prompt_following'], '.0%')} | "
            f"{_fmt(None if r['peak_cache_bytes'] is None else r['peak_cache_bytes'] / 2**20, '.2f', ' MiB')} | "
            f"{_fmt(r.get('decide_ms_per_step'), '.3f')} |")
    table = dominance(results)
    if table:
        lines += ["", dominance_markdown(table, "Dominance: each peer point against cachekit's rows (no more FLOPs, no less PSNR)")]
    tuned = budget_table(results)
    if tuned:
        lines += ["", budget_markdown(tuned, "Tuned plans: each against the best other row within its budget")]
    return "\n".join(lines) + "\n"


def pareto_plot(results: Sequence[dict], path: str | Path, title: str) -> Path:
    """Write :func:`pareto_figure` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(results, title)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def pareto_figure(results: Sequence[dict], title: str) -> Any:
    """PSNR against the compute fraction (executed FLOPs over uncached), one line per method family
    (its threshold or interval sweep); peers dashed with crosses, cachekit solid with dots. Each
    family has its own colour (20, then the markers change) and its name in the legend, outside the
    axes, so no label covers a point, however close the points lie."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6))
    families: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if r["error"] or r.get("skipped") or r["source"] == "uncached" or r.get("compute_fraction") is None:
            continue
        families.setdefault((r["source"], family(r)), []).append(r)
    colors = plt.get_cmap("tab20").colors
    for i, ((source, name), rows) in enumerate(sorted(families.items())):
        rows = sorted(rows, key=lambda r: r["compute_fraction"])
        peer = source != "cachekit"
        marker = ("x", "+", "1")[i // len(colors) % 3] if peer else ("o", "s", "^")[i // len(colors) % 3]
        ax.plot([r["compute_fraction"] for r in rows], [min(r["psnr"], 60.0) for r in rows],
                linestyle="--" if peer else "-", marker=marker, markersize=5, linewidth=1,
                color=colors[i % len(colors)], label=f"{name} ({source})" if peer else name)
    ax.set_xlabel("compute fraction (executed FLOPs / uncached)")
    ax.set_ylabel("PSNR against uncached (dB, capped at 60)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


#: What two benches must share for their rows to be compared.
SAME_SETTING = ("model", "steps", "guidance", "prompts", "seeds", "repeats")


def merged(previous: dict, results: Sequence[dict], meta: dict) -> list[dict]:
    """The rows of a written bench (``previous``: its JSON) with ``results`` measured again in the same
    setting: a row of the same name is replaced, a new one is added (the uncached row is kept)."""
    before = previous["meta"]
    differ = [key for key in SAME_SETTING if before.get(key) != meta.get(key)]
    if differ:
        settings = ", ".join(f"{key}={before.get(key)!r}" for key in differ)
        raise ValueError(f"the bench to update was measured with other {', '.join(differ)} ({settings}); run it again in full")
    fresh = {r["name"]: r for r in results if r["source"] != "uncached"}
    rows = [fresh.pop(r["name"], r) for r in previous["rows"]]
    return rows + list(fresh.values())


def write(results: Sequence[dict], out: str | Path, title: str, meta: dict) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(markdown(results, title))
    (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": list(results)}, indent=2))
    return [out / "bench.md", out / "bench.json", pareto_plot(results, out / "pareto.png", title)]
