import json
import subprocess
import sys

import pytest

from cachekit.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "policies:" in out and "reuse" in out and "latte" in out and "naive-reuse" in out and "cachekit 0.1.0" in out


def test_plan_text_json_dot_png(tmp_path, capsys):
    dot, png = tmp_path / "plan.dot", tmp_path / "plan.png"
    assert main(["plan", "--config", "naive-reuse", "--steps", "20", "--dot", str(dot), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "predicted speedup: " in out and "compute fraction" in out and "blocks.1.attn.temporal [cond]" in out
    assert dot.read_text().startswith("digraph stepplan {") and "->" in dot.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plan", "--steps", "20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_steps"] == 20 and data["branches"] == ["uncond", "cond"]
    assert data["prediction"]["speedup"] > 0 and data["prediction"]["peak_cache_bytes"] > 0  # timed
    assert data["counts"]["reuse"] > 0
    assert len(data["nodes"]) == 20 * 5 * 2
    assert main(["plan", "--steps", "20", "--no-cfg", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["branches"] == ["cond"]


def test_errors_exit_2(capsys):
    assert main(["plan", "--config", "nope"]) == 2
    assert "cachekit: error: 'nope' is neither a preset" in capsys.readouterr().err
    assert main(["plan", "--model", "no_colon"]) == 2


def test_run_writes_a_video_a_heatmap_and_a_report(tmp_path):
    """The console script, as README runs it: speedup, PSNR, SSIM, the report, and the files."""
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "cachekit.cli", "run", "--steps", "8", "--repeats", "1", "--quiet",
                             "--prompt", "green square moving up", "--out", str(out)], capture_output=True, text=True, check=True)
    assert "decisions executed" in result.stdout and "measured speedup" in result.stdout
    assert "PSNR" in result.stdout and "SSIM" in result.stdout and "'green square moving up'" in result.stdout
    gif = (out / "side-by-side.gif").read_bytes()
    assert gif[:6] == b"GIF89a"
    import imageio.v3 as iio

    frames = iio.imread(out / "side-by-side.gif", index=None)
    assert frames.shape[0] == 8 and frames.shape[2] > 2.5 * frames.shape[1]  # 8 frames of three panels side by side
    assert (out / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "report.json").read_text())
    assert data["num_steps"] == 8
    measured = data["measured"]  # what the command printed, kept with the report
    assert f"measured speedup: {measured['speedup']:.2f}x" in result.stdout
    assert f"PSNR {measured['psnr']:.2f} dB, SSIM {measured['ssim']:.4f}" in result.stdout
    assert measured["prompt"] == "green square moving up" and measured["repeats"] == 1


def test_run_labels_each_progress_bar(tmp_path, capsys):
    """Each of the run's generations has its own bar, named by what it is, its seed and round."""
    assert main(["run", "--steps", "2", "--repeats", "2", "--seed", "3", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    labels = ["uncached, seed 3, warm-up", "cached, seed 3, warm-up (plans and profiles)",
              "uncached, seed 3, round 1/2", "cached, seed 3, round 1/2", "uncached, seed 3, round 2/2",
              "cached, seed 3, round 2/2"]
    assert all(f"{label}:" in err for label in labels), err[-500:]
    assert [err.index(f"{label}:") for label in labels] == sorted(err.index(f"{label}:") for label in labels)


def test_run_refuses_unknown_words(capsys):
    assert main(["run", "--prompt", "purple square", "--quiet"]) == 2
    assert "unknown word(s) 'purple'" in capsys.readouterr().err


def test_bench_grid_with_peers(tmp_path, capsys):
    from cachekit import bench

    out = tmp_path / "bench"
    grid = (("fastercache preset", "fastercache"), ("step_reuse interval 2", {"policy": [{"type": "step_reuse", "interval": 2}]}))
    from cachekit.evaluate import zoo_job
    from cachekit.zoo import moving_shapes

    job = zoo_job("moving-shapes", 10, 1.5, moving_shapes.prompts()[:2])
    lines = []
    rows = bench.run_bench(job, 10, [0], 1, peers=True, grid=grid, progress=lines.append)
    live = sum(r["error"] is None for r in rows)
    announced = [i for i, line in enumerate(lines) if " rows x " in line]
    counted = [line for line in lines if line.startswith("[")]
    assert announced and lines.index(counted[0]) > announced[0]  # announced before any generation
    started = int(lines[announced[0]].split()[0])  # rows set up; some may fail on their first run
    assert lines[announced[0]].startswith(f"{started} rows x 1 seeds: {started * 3} generations of 2 clips")
    assert started >= live and counted[-1].startswith(f"[{len(counted)}/{len(counted)}] ")
    assert all("min left)" in line for line in counted)
    names = [r["name"] for r in rows]
    assert names[:3] == ["uncached", "fastercache preset", "step_reuse interval 2"]
    assert "diffusers FasterCache" in names and "cache-dit DBCache F1B0 threshold 0.08" in names
    base, preset, steps = rows[:3]
    assert base["compute_fraction"] == 1.0 and base["psnr"] >= 100 and base["peak_cache_bytes"] == 0
    assert preset["error"] is None and 0 < preset["compute_fraction"] < 1 and preset["predicted_speedup"] > 0
    assert preset["peak_cache_bytes"] > 0 and 0 <= preset["ssim"] <= 1 and preset["rates"] is not None
    assert steps["compute_fraction"] < preset["compute_fraction"] + 0.5
    first_block = rows[names.index("diffusers FirstBlockCache threshold 0.05")]
    assert first_block["error"] and "cache context" in first_block["error"]  # Latte's pipeline sets none
    paths = bench.write(rows, out, "test", {})
    text = (out / "bench.md").read_text()
    assert "| fastercache preset | cachekit |" in text
    dominance = text.split("Dominance")[1]  # every peer point that ran is a row of the dominance table
    assert all(f"| {r['name']} |" in dominance for r in rows if r["source"] not in ("cachekit", "uncached")
               and r["error"] is None and not r.get("skipped"))
    assert json.loads((out / "bench.json").read_text())["rows"][1]["name"] == "fastercache preset"
    assert paths[-1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def bench_row(name, source, fraction, psnr, predicted=None):
    return {"name": name, "source": source, "error": None, "compute_fraction": fraction, "psnr": psnr,
            "predicted_speedup": predicted, "measured_speedup": 1.2, "efficiency": None if predicted is None else 0.9,
            "ssim": 0.9, "prompt_following": None, "peak_cache_bytes": None}


def test_bench_table_and_plot_read_clearly_where_peers_predict_nothing_and_points_coincide(tmp_path):
    """A peer's missing prediction reads "n/a" (not "—x"); on families whose points coincide, each
    keeps its own colour and marker and the legend lies outside the axes, covering no point."""
    from cachekit import bench

    rows = [bench_row("uncached", "uncached", 1.0, 100.0, 1.0)]
    rows += [bench_row(f"{name} threshold {t}", "cachekit", 0.5 + t, 40.0, 1.5) for name in
             ("first_block", "magcache", "easycache", "teacache", "seacache", "taylorseer", "pab", "reuse",
              "step_reuse", "fastercache", "cfg_cache") for t in (0.0, 0.01)]
    rows += [bench_row(name, "diffusers", 0.5, 40.0) for name in ("diffusers FasterCache", "diffusers PAB")]
    text = bench.markdown(rows, "t")
    assert "—x" not in text and "— MiB" not in text
    assert "| diffusers PAB | diffusers | 0.500 | n/a | 1.20x | n/a | 40.00 |" in text
    fig = bench.pareto_figure(rows, "t")
    ax = fig.axes[0]
    styles = [(line.get_color(), line.get_marker(), line.get_linestyle()) for line in ax.get_lines()]
    assert len(styles) == 13 and len(set(styles)) == 13
    renderer = fig.canvas.get_renderer()
    legend, frame = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= frame.x1  # beside the axes, not over them
    assert bench.pareto_plot(rows, tmp_path / "pareto.png", "t").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_without_timed_rounds_measures_flops_and_quality():
    from cachekit import bench
    from cachekit.evaluate import zoo_job
    from cachekit.zoo import moving_shapes

    job = zoo_job("moving-shapes", 6, 1.5, moving_shapes.prompts()[:1])
    rows = bench.run_bench(job, 6, [0], 0, peers=False, progress=lambda line: None)
    sweep = [r for r in rows if r["name"].startswith("first_block threshold")]
    assert len(sweep) >= 3 and all(r["error"] is None and r["measured_speedup"] is None for r in sweep)
    assert all(0 < r["compute_fraction"] <= 1 for r in sweep)
    # online rows report their decision time per step, static ones have none to report
    assert all(r["decide_ms_per_step"] > 0 for r in sweep)
    static = next(r for r in rows if r["name"] == "preset quality")
    assert static["decide_ms_per_step"] is None
    line = next(line for line in bench.markdown(rows, "t").splitlines() if line.startswith(f"| {sweep[0]['name']} |"))
    assert line.endswith(f"| {sweep[0]['decide_ms_per_step']:.3f} |") and "decide ms/step" in bench.markdown(rows, "t")


def test_plan_fastercache_preset_at_50_steps(capsys):
    assert main(["plan", "--config", "fastercache", "--steps", "50"]) == 0
    out = capsys.readouterr().out
    fraction = float(out.split("compute fraction ")[1].split("%")[0])
    float(out.split("predicted speedup: ")[1].split("x")[0])  # a number (timed: its value is not asserted)
    assert 40 < fraction < 80 and "from timed calls" in out
    assert "denoiser [uncond]" in out and "X" in out.split("denoiser [uncond]")[1].splitlines()[0]


def test_plan_uses_the_pipeline_timesteps(tmp_path, capsys):
    config = tmp_path / "compat.toml"
    config.write_text('[[policy]]\ntype = "pab"\ncompat = "diffusers"\nwindow = { start = 100, end = 800, unit = "timestep" }\n')
    assert main(["plan", "--config", str(config), "--steps", "20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["timesteps"][0] == 950.0 and data["counts"]["reuse"] > 0



@pytest.mark.parametrize("argv, message", [
    (["plan", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["plan", "--steps", "-5"], "--steps must be at least 1, got -5"),
    (["run", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["run", "--repeats", "0"], "--repeats must be at least 1, got 0"),
    (["run", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["run", "--amplify", "0"], "--amplify must be a positive number, got 0"),
    (["run", "--guidance", "nan"], "--guidance must be at least 0, got nan"),
    (["bench", "--repeats", "-1"], "--repeats must be at least 0, got -1"),  # 0: FLOPs and quality only
    (["bench", "--prompts", "17"], "--prompts must be at most 16"),
    (["bench", "--seeds", "0", "-1"], "--seeds must be at least 0, got -1"),
])
def test_numeric_options_are_checked_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"cachekit: error: {message}\n" or (err.startswith(f"cachekit: error: {message}") and err.count("\n") == 1)


def test_run_checks_out_before_generating(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--out", str(blocker / "run"), "--steps", "2", "--repeats", "1", "--quiet"]) == 2
    err = capsys.readouterr()
    assert err.err.startswith(f"cachekit: error: --out '{blocker / 'run'}': cannot write there (") and err.err.count("\n") == 1
    assert "model:" not in err.out  # nothing was generated


def test_plan_shows_the_model_cachekit_run_uses(capsys):
    assert main(["plan", "--model", "moving-shapes", "--config", "fastercache", "--steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "on LatteTransformer3DModel, 10 steps" in out and "blocks.3." in out  # the trained 4-layer Latte


def test_bench_only_keeps_the_rows_named_and_uncached():
    from cachekit import bench
    from cachekit.evaluate import zoo_job
    from cachekit.zoo import moving_shapes

    job = zoo_job("moving-shapes", 4, 1.5, moving_shapes.prompts()[:1])
    grid = (("fastercache preset", "fastercache"), ("step_reuse interval 2", {"policy": [{"type": "step_reuse", "interval": 2}]}))
    rows = bench.run_bench(job, 4, [0], 0, peers=True, grid=grid, progress=lambda line: None,
                           only=["step_reuse *", "diffusers PAB"])
    assert [r["name"] for r in rows] == ["uncached", "step_reuse interval 2", "diffusers PAB"]


def test_bench_update_measures_some_rows_again_into_a_written_bench(tmp_path, capsys):
    out = tmp_path / "b"
    base = ["bench", "--steps", "4", "--prompts", "1", "--seeds", "0", "--repeats", "0", "--no-peers", "--out", str(out)]
    assert main([*base, "--only", "preset fast", "step_reuse interval 2"]) == 0
    first = json.loads((out / "bench.json").read_text())["rows"]
    assert main([*base, "--only", "preset quality", "step_reuse interval 2", "--update"]) == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["uncached", "step_reuse interval 2", "preset fast", "preset quality"]
    assert rows[0] == first[0] and rows[2] == first[2]  # kept as they were
    assert rows[1]["psnr"] == first[1]["psnr"]  # measured again, in the same setting: the same
    assert "preset quality" in (out / "bench.md").read_text()
    capsys.readouterr()
    other = ["bench", "--steps", "5", "--prompts", "1", "--seeds", "0", "--repeats", "0", "--no-peers", "--out", str(out)]
    assert main([*other, "--only", "preset fast", "--update"]) == 2
    assert "measured with other steps (steps=4)" in capsys.readouterr().err
    assert main([*other[:-1], str(tmp_path / "none"), "--only", "preset fast", "--update"]) == 2
