import json
import subprocess
import sys


from cachekit.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "policies:" in out and "reuse" in out and "latte" in out and "naive-reuse" in out and "cachekit 0.1.0" in out


def test_plan_text_json_dot_png(tmp_path, capsys):
    dot, png = tmp_path / "plan.dot", tmp_path / "plan.png"
    assert main(["plan", "--config", "naive-reuse", "--steps", "20", "--dot", str(dot), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "predicted speedup: 1." in out and "compute fraction" in out and "blocks.1.attn.temporal [cond]" in out
    assert dot.read_text().startswith("digraph stepplan {") and "->" in dot.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plan", "--steps", "20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_steps"] == 20 and data["branches"] == ["uncond", "cond"]
    assert data["prediction"]["speedup"] > 1.0 and data["prediction"]["peak_cache_bytes"] > 0
    assert len(data["nodes"]) == 20 * 5 * 2
    assert main(["plan", "--steps", "20", "--no-cfg", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["branches"] == ["cond"]


def test_errors_exit_2(capsys):
    assert main(["plan", "--config", "nope"]) == 2
    assert "cachekit: error: 'nope' is neither a preset" in capsys.readouterr().err
    assert main(["plan", "--model", "no_colon"]) == 2


def test_console_script_runs_demo():
    result = subprocess.run([sys.executable, "-m", "cachekit.cli", "run", "--steps", "6"], capture_output=True, text=True, check=True)
    assert "decisions executed" in result.stdout and "relative L2" in result.stdout and "measured speedup" in result.stdout


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
