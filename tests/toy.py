"""A toy denoiser with known answers: its attention output is linear in the timestep (quadratic in
``ToyCurvedDenoiser``), and its unconditional output is the conditional one plus a fixed field
(plus the timestep times a second field in ``ToyCurvedDenoiser``). Float64, elementwise per sample."""

import torch

import cachekit
from cachekit import Adapter, Site


class ToyAttention(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(1, channels, 1, 1, 1, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(1, channels, 1, 1, 1, dtype=torch.float64))
        #: The t^2 coefficient (zero: linear in t).
        self.c = torch.nn.Parameter(torch.zeros(1, channels, 1, 1, 1, dtype=torch.float64))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        t = temb.view(-1, 1, 1, 1, 1)
        return torch.zeros_like(hidden_states) + self.a + t * self.b + t * t * self.c


class ToyDenoiser(torch.nn.Module):
    """Batched CFG: one call with [uncond, cond]; ``encoder_hidden_states`` is 0 (uncond) or 1 (cond)."""

    def __init__(self, channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.attn = ToyAttention(channels)
        self.field = torch.nn.Parameter(torch.randn(1, channels, 1, 8, 8, dtype=torch.float64))
        #: uncond - cond = field + t * drift (zero: a fixed field).
        self.drift = torch.nn.Parameter(torch.zeros(1, channels, 1, 8, 8, dtype=torch.float64))

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        h = torch.tanh(hidden_states + self.attn(hidden_states, timestep))
        t = timestep.view(-1, 1, 1, 1, 1)
        return (h + (self.field + t * self.drift) * (1 - encoder_hidden_states.view(-1, 1, 1, 1, 1)),)


class ToyCurvedDenoiser(ToyDenoiser):
    """Attention output a + t b + t^2 c; uncond = cond + G0 + t G1."""

    def __init__(self, channels: int = 3, seed: int = 0) -> None:
        super().__init__(channels, seed)
        with torch.no_grad():
            self.attn.c.copy_(torch.randn(1, channels, 1, 1, 1, dtype=torch.float64))
            self.drift.copy_(torch.randn(1, channels, 1, 8, 8, dtype=torch.float64))


class ToySplitDenoiser(ToyDenoiser):
    """The same model, called once per branch: cond first, then uncond."""


class ToyAdapter(Adapter):
    name = "toy"
    model_classes = ("ToyDenoiser",)

    def sites(self):
        return [Site("denoiser", "denoiser", "", layout="BCFHW"),
                Site("blocks.0.attn.spatial", "attn.spatial", "attn", 0, "denoiser")]


class ToySplitAdapter(ToyAdapter):
    name = "toy-split"
    model_classes = ("ToySplitDenoiser",)
    cfg_layout = "split"
    call_order = ("cond", "uncond")


def register() -> None:
    cachekit.register_adapter(ToyAdapter)
    cachekit.register_adapter(ToySplitAdapter)


def timestep(step: int, batch: int) -> torch.Tensor:
    """Linear in the step."""
    return torch.full((batch,), 1.0 - 0.04 * step, dtype=torch.float64)


def sample(model, steps: int, latents: torch.Tensor, guidance: float = 3.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A small Euler-like CFG loop; returns the final latents and each step's (uncond, cond)."""
    x, trace = latents, []
    batch = x.shape[0]
    ones, zeros = torch.ones(batch, 1, dtype=x.dtype), torch.zeros(batch, 1, dtype=x.dtype)
    with torch.no_grad():
        for step in range(steps):
            t = timestep(step, batch)
            if isinstance(model, ToySplitDenoiser):
                cond = model(x, t, ones)[0]
                uncond = model(x, t, zeros)[0]
            else:
                uncond, cond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([zeros, ones]))[0].chunk(2)
            trace.append((uncond, cond))
            x = x - 0.1 * (uncond + guidance * (cond - uncond))
    return x, trace


def latents(batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 2, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
