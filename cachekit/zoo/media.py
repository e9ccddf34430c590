"""Pictures of clips: a sample grid (PNG) and a side-by-side video (GIF), upscaled for people."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def _pixels(clip: torch.Tensor, scale: int) -> torch.Tensor:
    """``(3, F, H, W)`` in [0, 1] -> ``(F, H*scale, W*scale, 3)`` uint8, nearest-neighbour upscaled."""
    frames = clip.permute(1, 2, 3, 0).clamp(0, 1)
    frames = frames.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return (frames * 255).round().to(torch.uint8)


def _border(width: int, height: int) -> torch.Tensor:
    return torch.full((height, width, 3), 64, dtype=torch.uint8)


def _caption(labels: Sequence[str], widths: Sequence[int], gap: int) -> torch.Tensor:
    """A strip with each label over its panel."""
    import numpy
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (sum(widths) + gap * (len(widths) - 1), 16), (64, 64, 64))
    draw, x = ImageDraw.Draw(strip), 0
    for label, width in zip(labels, widths):
        draw.text((x + 4, 2), label, fill=(255, 255, 255))
        x += width + gap
    return torch.from_numpy(numpy.asarray(strip).copy())


def side_by_side(panels: Sequence[torch.Tensor], path: str | Path, labels: Sequence[str] = (), scale: int = 12,
                 fps: int = 4) -> Path:
    """Write clips ``(3, F, H, W)`` in [0, 1], left to right under their ``labels``, as a looping GIF."""
    import imageio.v3 as iio

    videos = [_pixels(p, scale) for p in panels]
    gap = scale // 2
    caption = _caption(labels, [v.shape[2] for v in videos], gap) if labels else None
    frames = []
    for f in range(videos[0].shape[0]):
        row = []
        for i, video in enumerate(videos):
            if i:
                row.append(_border(gap, video.shape[1]))
            row.append(video[f])
        frame = torch.cat(row, dim=1)
        frames.append((frame if caption is None else torch.cat([caption, frame])).numpy())
    path = Path(path)
    iio.imwrite(path, frames, extension=".gif", duration=1000 // fps, loop=0)
    return path


def grid(clips: Sequence[torch.Tensor], labels: Sequence[str], path: str | Path, scale: int = 4) -> Path:
    """One row per clip (its frames left to right), labelled, as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def strip(clip: torch.Tensor) -> torch.Tensor:
        frames = _pixels(clip, scale)
        gap = _border(max(1, scale // 2), frames.shape[1])
        return torch.cat([part for frame in frames for part in (frame, gap)][:-1], dim=1)

    rows = [strip(c).numpy() for c in clips]
    fig, axes = plt.subplots(len(rows), 1, figsize=(len(clips[0][0]) * 0.9, len(rows) * 0.75 + 0.2))
    for ax, row, label in zip(axes if len(rows) > 1 else [axes], rows, labels):
        ax.imshow(row)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=7, loc="left", pad=1)
    fig.tight_layout(pad=0.2)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
