"""Pictures: the plan as a sites x steps heatmap (matplotlib, optional)."""

from __future__ import annotations

from .errors import CachekitError
from .plan import SYMBOLS, StepPlan

COLOURS = {"compute": "#4c72b0", "reuse": "#55a868", "reconstruct": "#dd8452", "online": "#ccb974", "skip": "#e5e5e5"}


def plan_heatmap(plan: StepPlan, path: str, title: str = "") -> None:
    """Write a PNG: one row per (site, branch), one column per step, a colour per action."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError:
        raise CachekitError("--png needs matplotlib; pip install 'cachekit[plot]'") from None
    kinds = list(SYMBOLS)
    rows, labels = [], []
    for site in plan.sites:
        for branch in plan.branches:
            rows.append([kinds.index(plan.action((step, site.name, branch)).kind) for step in range(plan.num_steps)])
            labels.append(f"{site.name} [{branch}]")
    height = max(2.5, 0.18 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.14 * plan.num_steps + 3), height))
    ax.imshow(rows, aspect="auto", interpolation="nearest", cmap=ListedColormap([COLOURS[k] for k in kinds]),
              vmin=0, vmax=len(kinds) - 1)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel("denoising step")
    ax.set_title(title, fontsize=9)
    ax.legend(handles=[Patch(color=COLOURS[k], label=k) for k in kinds], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
