"""benchmarks/gpu.py at its reduced CPU size: the result files, their rows and counts (never timings)."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
STEPS = 4


@pytest.fixture
def gpu():
    spec = importlib.util.spec_from_file_location("benchmarks_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smoke(gpu, out: pathlib.Path, variants: str, steps: int = STEPS) -> dict:
    argv = ["--device", "cpu", "--small", "--steps", str(steps), "--backend", "eager", "--variants", variants,
            "--out", str(out)]
    assert gpu.main(argv) == 0
    return json.loads((out / "gpu.json").read_text())


def test_smoke_run_writes_a_row_per_variant(gpu, tmp_path, capsys):
    result = smoke(gpu, tmp_path, "first_block,fast+compile,fast")
    rows = {row["variant"]: row for row in result["variants"]}
    assert list(rows) == ["uncached", "fast", "fast+compile", "first_block"]  # the reference first, then in order

    parameters = result["parameters"]
    assert parameters["small"] and parameters["steps"] == STEPS and parameters["dtype"] == "float32"
    assert parameters["latent_shape"] == [1, 16, 3, 8, 8] and parameters["video_tokens"] == 3 * 4 * 4
    assert parameters["model_config"]["num_layers"] == 2 and parameters["backend"] == "eager"
    assert "torch_threads" in result["machine"]

    for name, row in rows.items():
        assert "error" not in row, (name, row.get("error"))
        assert len(row["step_s"]) == STEPS and len(row["warmup_s"]) == 1 and len(row["totals_s"]) == 1
        assert row["finite"] and row["peak_memory_bytes"] is None  # no CUDA memory on CPU
        assert row["compiled"] == name.endswith("+compile")
    reference = rows["uncached"]
    assert reference["speedup"] == 1.0 and reference["rel_l2"] == 0.0 and reference["bitwise_equal"]
    assert reference["compile"] is None and "executed" not in reference
    how = rows["fast+compile"]["compile"]
    assert how.startswith("torch.compile(transformer") or "compile=True" in how

    for name in ("fast", "fast+compile", "first_block"):
        row = rows[name]
        assert isinstance(row["measured_peak_cache_bytes"], int) and row["measured_peak_cache_bytes"] > 0
        assert 0 < row["compute_fraction"] <= 1
        assert row["rel_l2"] >= 0 and row["config"] == gpu.CONFIGS[name.removesuffix("+compile")]
    # fast (TaylorSeer lite) decides on the denoiser: one node per step and branch, the same plan compiled
    assert sum(rows["fast"]["executed"].values()) == STEPS * 2
    assert rows["fast+compile"]["executed"] == rows["fast"]["executed"]
    assert rows["fast+compile"]["same_decisions_as_eager"] and rows["fast+compile"]["rel_l2_vs_eager"] >= 0
    assert "rel_l2_vs_eager" not in rows["fast"]

    table = (tmp_path / "gpu.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + len(rows)  # header and rows
    assert table in capsys.readouterr().out


def test_a_variant_that_raises_is_reported_and_the_others_run(gpu, tmp_path):
    gpu.CONFIGS["fast"] = {"policy": [{"type": "no_such_policy"}]}
    rows = {row["variant"]: row for row in smoke(gpu, tmp_path, "fast,quality", steps=2)["variants"]}
    assert list(rows) == ["uncached", "quality", "fast"]  # in the order of variant_names()
    assert "no_such_policy" in rows["fast"]["error"] and "\n" not in rows["fast"]["error"]
    assert "total_s" not in rows["fast"] and "error" not in rows["quality"]
    assert "no_such_policy" in (tmp_path / "gpu.md").read_text()


def test_unknown_variants_are_refused(gpu, tmp_path):
    with pytest.raises(SystemExit, match="unknown variants"):
        gpu.main(["--device", "cpu", "--variants", "fast,nope", "--out", str(tmp_path)])
    assert not (tmp_path / "gpu.json").exists()
