"""Plot benchmarks/results/policies.json: measured speedup against PSNR, and predicted against
measured speedup. Run from the repository root after benchmarks/policies.py:

    .venv/bin/python benchmarks/plot_policies.py

Writes docs/img/policies.png.
"""

from __future__ import annotations

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(results: pathlib.Path = ROOT / "benchmarks/results/policies.json", out: pathlib.Path = ROOT / "docs/img/policies.png") -> int:
    variants = [v for v in json.loads(results.read_text())["variants"] if v["variant"] != "uncached"]
    fig, (quality, model) = plt.subplots(1, 2, figsize=(11, 4.2))
    for v in variants:
        colour = "tab:orange" if v["source"] == "diffusers" else "tab:blue"
        quality.scatter(v["measured_speedup"], v["psnr_db"], color=colour)
        quality.annotate(v["variant"].replace("cachekit ", ""), (v["measured_speedup"], v["psnr_db"]), fontsize=7,
                         xytext=(4, -9 if v["source"] == "diffusers" else 3), textcoords="offset points")
        if v.get("predicted_speedup"):
            model.scatter(v["predicted_speedup"], v["measured_speedup"], color=colour)
            model.annotate(v["variant"].replace("cachekit ", ""), (v["predicted_speedup"], v["measured_speedup"]),
                           fontsize=7, xytext=(4, -8), textcoords="offset points")
    quality.set(xlabel="measured speedup (median of interleaved rounds)", ylabel="PSNR vs uncached latents (dB)",
                title="speed and fidelity (random weights: a ranking only)")
    quality.scatter([], [], color="tab:blue", label="cachekit")
    quality.scatter([], [], color="tab:orange", label="diffusers")
    quality.legend(fontsize=8)
    low, high = 1.0, max(v.get("predicted_speedup") or 1.0 for v in variants) * 1.05
    model.plot([low, high], [low, high], color="grey", lw=0.8, label="measured = predicted")
    model.plot([low, high], [0.9 * low, 0.9 * high], color="grey", lw=0.8, ls="--", label="measured = 0.9 x predicted")
    model.set(xlabel="predicted speedup (cost model)", ylabel="measured speedup", title="cost model")
    model.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
