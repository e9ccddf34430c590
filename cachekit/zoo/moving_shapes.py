"""The moving-shapes world: clips of one coloured square crossing a dark frame, the prompt
vocabulary, the transformer's architecture, and the measurements a generated clip is judged by.

Pixel space, no VAE: a clip is ``(3, FRAMES, SIZE, SIZE)`` in [-1, 1] (black background -1), which
is both what the transformer denoises and what a person looks at.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

FRAMES, SIZE, SQUARE = 8, 16, 4
#: Pixels the square travels per frame; it starts within ``START_JITTER`` of the edge it leaves.
SPEED, START_JITTER = 1.5, 1.5
#: Each direction has its lane: the square's offset across its path (px from the top or left
#: edge), jittered by up to ``LANE_JITTER``: leftward and upward squares keep near the top/left,
#: rightward and downward ones near the bottom/right.
LANES: dict[str, float] = {"left": 2.0, "right": 10.0, "up": 2.0, "down": 10.0}
LANE_JITTER = 1.0
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0),
}
#: Unit displacement (dx, dy) per direction; y grows downwards.
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
FILLERS = ("a", "the", "square", "moving")
VOCABULARY: tuple[str, ...] = (*COLOURS, *DIRECTIONS, *FILLERS)
#: Colour and direction words a prompt may hold. The prompt is ONE text token: the sum of its
#: words' vectors (the empty prompt is the zero vector). With a token per word, cross-attention
#: learned to attend to the colour token alone and the direction never reached the video.
MAX_WORDS = 4
EMBED_DIM = 32


def prompts() -> list[str]:
    """The 16 prompts the model was trained on: every colour with every direction."""
    return [f"{colour} square moving {direction}" for colour in COLOURS for direction in DIRECTIONS]


def tokenize(prompt: str) -> list[int]:
    """Vocabulary indices of ``prompt``'s words (1-based; 0 is padding)."""
    from ..errors import CachekitError

    words = prompt.lower().replace(",", " ").split()
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        raise CachekitError(f"unknown word(s) {', '.join(map(repr, unknown))} in prompt {prompt!r}; the moving-shapes "
                            f"model knows: {', '.join(VOCABULARY)}")
    meaning = [w for w in words if w not in FILLERS]
    if len(meaning) > MAX_WORDS:
        raise CachekitError(f"prompt {prompt!r} has {len(meaning)} colour/direction words; at most {MAX_WORDS}")
    return [VOCABULARY.index(w) + 1 for w in meaning]


def token_ids(batch: Sequence[str]) -> torch.Tensor:
    """``(len(batch), MAX_WORDS)`` padded indices."""
    ids = torch.zeros(len(batch), MAX_WORDS, dtype=torch.long)
    for row, prompt in enumerate(batch):
        tokens = tokenize(prompt)
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return ids


def embed(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``(n, 1, EMBED_DIM)`` prompt embeddings: the sum of the words' rows of ``table`` (row 0,
    padding, is zero)."""
    return torch.nn.functional.embedding(ids, table, padding_idx=0).sum(dim=1, keepdim=True)


def transformer_config() -> dict[str, Any]:
    """The LatteTransformer3DModel configuration of the embedded model (learned-sigma output: 2 x 3 channels)."""
    return dict(
        sample_size=SIZE, num_layers=4, patch_size=2, attention_head_dim=16, num_attention_heads=4,
        caption_channels=EMBED_DIM, in_channels=3, out_channels=6, cross_attention_dim=64, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, video_length=FRAMES,
    )


def scheduler_config() -> dict[str, Any]:
    """v-prediction on a linear schedule rescaled to zero terminal SNR, trailing timestep spacing."""
    return dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type="v_prediction",
                rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)


def wan_transformer_config() -> dict[str, Any]:
    """The WanTransformer3DModel configuration of ``moving-shapes-wan``: the same width and depth as the
    Latte model (4 layers, width 64) in two heads of 32, so that Wan's 3-D RoPE gives height and width
    10 rotary channels each (heads of 16 would give them 4), full 3-D self-attention over 8 x 8 x 8 patches,
    cross-attention to the one prompt token in every block, velocity output (3 channels)."""
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=3, out_channels=3,
        text_dim=EMBED_DIM, freq_dim=64, ffn_dim=256, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64,
    )


def flow_scheduler_config() -> dict[str, Any]:
    """Rectified flow (``x_t = (1 - s) x0 + s noise``, the model predicts ``noise - x0``), Euler steps;
    the shift spends more of the steps at the high noise levels where the square's place is decided."""
    return dict(num_train_timesteps=1000, shift=2.0)


# -- the data ------------------------------------------------------------------------------------


def _coverage(start: torch.Tensor) -> torch.Tensor:
    """``(n, SIZE)`` fraction of each pixel [i, i+1) covered by the interval [start, start + SQUARE)."""
    pixels = torch.arange(SIZE, dtype=torch.float32)
    lo = torch.maximum(pixels, start[:, None])
    hi = torch.minimum(pixels + 1, start[:, None] + SQUARE)
    return (hi - lo).clamp(0, 1)


def render(colours: Sequence[str], directions: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """``(n, 3, FRAMES, SIZE, SIZE)`` clips in [-1, 1]: each square enters near the edge it leaves
    and crosses the frame in its direction's lane at ``SPEED`` px/frame (anti-aliased), both
    positions jittered."""
    n = len(colours)
    travel = SPEED * (FRAMES - 1)
    along0 = torch.rand(n, generator=generator) * START_JITTER
    across = torch.tensor([LANES[d] for d in directions]) + (torch.rand(n, generator=generator) * 2 - 1) * LANE_JITTER
    clips = torch.empty(n, 3, FRAMES, SIZE, SIZE)
    for f in range(FRAMES):
        progress = along0 + SPEED * f
        xs, ys = torch.empty(n), torch.empty(n)
        for i, d in enumerate(directions):
            dx, dy = DIRECTIONS[d]
            edge = SIZE - SQUARE - progress[i] if (dx < 0 or dy < 0) else progress[i]
            xs[i], ys[i] = (edge, across[i]) if dx else (across[i], edge)
        mask = _coverage(ys)[:, :, None] * _coverage(xs)[:, None, :]  # (n, H, W)
        colour = torch.tensor([COLOURS[c] for c in colours])  # (n, 3)
        clips[:, :, f] = mask[:, None] * colour[:, :, None, None] * 2 - 1
    assert travel + START_JITTER + SQUARE <= SIZE
    return clips


def random_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """``n`` random clips and their prompts."""
    colour_names, direction_names = list(COLOURS), list(DIRECTIONS)
    c = torch.randint(len(colour_names), (n,), generator=generator).tolist()
    d = torch.randint(len(direction_names), (n,), generator=generator).tolist()
    colours, directions = [colour_names[i] for i in c], [direction_names[i] for i in d]
    return render(colours, directions, generator), [f"{a} square moving {b}" for a, b in zip(colours, directions)]


# -- judging a clip ------------------------------------------------------------------------------


def to_unit(clip: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((clip.float() + 1) / 2).clamp(0, 1)


#: The tests :func:`judge` runs on a clip.
TESTS = ("colour", "crisp", "coherent", "direction")


def _largest_blob(mask: torch.Tensor) -> torch.Tensor:
    """The largest 4-connected component of a boolean ``(H, W)`` mask."""
    seen = torch.zeros_like(mask)
    best = torch.zeros_like(mask)
    height, width = mask.shape
    for y0, x0 in mask.nonzero().tolist():
        if seen[y0, x0]:
            continue
        blob, stack = [], [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            blob.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(blob) > int(best.sum()):
            best = torch.zeros_like(mask)
            best[tuple(torch.tensor(blob).T)] = True
    return best


def judge(clip: torch.Tensor, prompt: str) -> dict[str, Any]:
    """Measure one generated clip ``(3, F, H, W)`` in [-1, 1] against its prompt.

    Per frame, the object is the largest 4-connected blob of pixels brighter than 0.4.

    - ``colour``: the colour nearest to the mean of the objects' pixels matches the prompt's;
    - ``crisp``: in every frame but at most one, the object's brightest pixel reaches 0.8 of the
      target colour in its strongest channel, the object is square-sized (8-36 pixels, the square
      covers 16-25) and holds >= 85% of the frame's bright mass (no speckle), on a background
      darker than 0.1;
    - ``coherent``: the object's centroids lie on a straight line (within 1 px) with a steady
      per-frame displacement (each step within 1 px of the mean step, mean step >= 0.5 px);
    - ``direction``: the net displacement points the prompted way (along it >= half the frames'
      count in px and twice the sideways drift).
    """
    words = prompt.split()
    target = next(w for w in words if w in COLOURS)
    heading = next(w for w in words if w in DIRECTIONS)
    unit = to_unit(clip)  # (3, F, H, W)
    channel = int(torch.tensor(COLOURS[target]).argmax())
    brightness = unit.max(dim=0).values  # (F, H, W)
    ys, xs = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij")
    crisp_frames, centroids, object_pixels = 0, [], []
    for f in range(unit.shape[1]):
        frame = brightness[f]
        bright = frame > 0.4
        blob = _largest_blob(bright)
        if not blob.any():
            blob = frame == frame.max()
        outside = ~blob
        background = frame[outside & ~bright].mean() if (outside & ~bright).any() else torch.tensor(1.0)
        mass = frame[bright].sum()
        share = float(frame[blob].sum() / mass) if mass > 0 else 0.0
        size = int(blob.sum())
        if unit[channel, f][blob].max() >= 0.8 and 8 <= size <= 36 and share >= 0.85 and background < 0.1:
            crisp_frames += 1
        weight = frame * blob
        total = weight.sum().clamp(min=1e-6)
        centroids.append(torch.stack([(weight * xs).sum() / total, (weight * ys).sum() / total]))
        object_pixels.append(unit[:, f][:, blob])
    pixels = torch.cat(object_pixels, dim=1).mean(dim=1)
    nearest = min(COLOURS, key=lambda name: float((torch.tensor(COLOURS[name]) - pixels).norm()))
    path = torch.stack(centroids)  # (F, 2)
    steps = path[1:] - path[:-1]
    mean_step = steps.mean(dim=0)
    steady = bool((steps - mean_step).norm(dim=1).max() < 1.0) and float(mean_step.norm()) >= 0.5
    fit = path[0] + torch.arange(len(path), dtype=torch.float32)[:, None] * mean_step
    straight = float((path - fit).norm(dim=1).max()) < 1.0
    net = path[-1] - path[0]
    dx, dy = DIRECTIONS[heading]
    along, sideways = float(net[0] * dx + net[1] * dy), abs(float(net[0] * dy - net[1] * dx))
    return {
        "colour": nearest == target,
        "crisp": crisp_frames >= unit.shape[1] - 1,
        "coherent": steady and straight,
        "direction": along >= 0.5 * len(path) and along > 2 * sideways,
        "seen_colour": nearest,
        "displacement": (round(float(net[0]), 2), round(float(net[1]), 2)),
    }


def rates(clips: torch.Tensor, batch_prompts: Sequence[str]) -> dict[str, float]:
    """The fraction of clips passing each of :func:`judge`'s tests."""
    verdicts = [judge(clip, prompt) for clip, prompt in zip(clips, batch_prompts)]
    return {key: sum(v[key] for v in verdicts) / len(verdicts) for key in TESTS}

