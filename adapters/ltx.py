"""LTX-Video (diffusers ``LTXVideoTransformer3DModel`` / ``LTXPipeline``): batched CFG [uncond, cond].

The model works on packed tokens: its input and output are ``(B, F*H*W, C)`` sequences (patch size
1 in the released models), with the latent grid passed as ``num_frames``, ``height``, ``width``.
The denoiser's layout is therefore ``"BLC"`` and ``frame_grid`` reads that grid from each call,
which maps the tokens back to frames for frequency-domain kernels (CFG-Cache's FFT). Each
``LTXVideoTransformerBlock`` runs a full spatio-temporal self-attention (``attn1``), a
cross-attention to the text (``attn2``) and a feed-forward (``ff``) and returns one tensor. The
rotary ``(cos, sin)`` pair is computed per sample: like every input whose dim 0 is the batch, it
carries the CFG branches.

``LTXConditionPipeline`` passes no grid but each token's coordinates (``video_coords``, ``(B, 3,
L)``); the grid is then read from them: the distinct frame, row and column coordinates, read once for the tensor the pipeline passes to
every call of a run. Conditions
given at a frame index other than 0 add tokens before the video's, which lie on no grid: a
frequency-domain kernel cannot map such a call to frames, and says so.
"""

from __future__ import annotations

from typing import Any

import torch

from cachekit.adapter import SELF_CROSS_FF, BlockListAdapter
from cachekit.errors import AdapterError
from cachekit.registry import hookimpl
from cachekit.values import first_tensor


class LTXAdapter(BlockListAdapter):
    """Sites per block i: the block (``transformer_blocks.i``, residual), its self-attention
    (``.attn1``), text cross-attention (``.attn2``) and feed-forward (``.ff``). Output: tokens on
    the latent grid divided by the patch size."""

    name = "ltx"
    model_classes = ("LTXVideoTransformer3DModel",)
    cfg_layout = "batched"
    call_order = ("uncond", "cond")
    output_layout = "BLC"
    block_children = SELF_CROSS_FF

    def loop_steps(self, pipe: Any) -> int | None:
        return terminal_steps(pipe)

    def frame_grid(self, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int]:
        config = self.model.config
        coords = kwargs.get("video_coords")
        if kwargs.get("num_frames") is not None:
            grid = (kwargs["num_frames"] // config.patch_size_t, kwargs["height"] // config.patch_size,
                    kwargs["width"] // config.patch_size)
            tokens = first_tensor(args, kwargs).shape[1]
            if coords is None or grid[0] * grid[1] * grid[2] == tokens:  # else the grid is the coordinates'
                return grid
        if coords is None:
            raise AdapterError(f"adapter '{self.name}': the call passes neither num_frames/height/width nor "
                               "video_coords, so its tokens cannot be mapped to frames")
        # the pipeline passes one tensor for the whole run (a one-branch call a batch slice of it), and
        # every sample shares the grid: it is read once per storage; the tensors are kept, so no other
        # tensor can take their memory while cached
        known = self.__dict__.setdefault("_grids", {})
        key = (coords.untyped_storage().data_ptr(), tuple(coords.shape[1:]), coords.dtype, coords.device)
        if key not in known:
            if len(known) >= 8:
                known.clear()
            known[key] = (coords, self._read_grid(coords))
        return known[key][1]

    def _read_grid(self, coords: torch.Tensor) -> tuple[int, int, int]:
        """The grid of ``video_coords`` (read from the device: the distinct coordinates per axis)."""
        grid = tuple(int(torch.unique(coords[0, axis]).numel()) for axis in range(3))
        if grid[0] * grid[1] * grid[2] != coords.shape[-1] or not _on_grid(coords[0], grid):
            raise AdapterError(f"adapter '{self.name}': the call's {coords.shape[-1]} tokens lie on no frame grid "
                               f"(their coordinates span {grid[0]} x {grid[1]} x {grid[2]}: conditioning tokens are "
                               "prepended, as for a condition at a frame index other than 0), so a frequency-domain "
                               "kernel (CFG-Cache's FFT) cannot run on it; leave cfg_cache out for such calls")
        return grid  # type: ignore[return-value]


def _on_grid(coords: torch.Tensor, grid: tuple[int, ...]) -> bool:
    """Whether the tokens' coordinates ``(3, L)`` run over ``grid`` in frame, row, column order: each
    axis's coordinate increases along its own axis of the grid and is constant along the others."""
    cells = coords.reshape(3, *grid)
    for axis in range(3):
        values = cells[axis]
        line = values.amax(dim=tuple(d for d in range(3) if d != axis))
        if not torch.equal(values, line.reshape([-1 if d == axis else 1 for d in range(3)]).expand_as(values)):
            return False
        if grid[axis] > 1 and not bool((line[1:] > line[:-1]).all()):
            return False
    return True


#: Pipelines whose loops walk ``scheduler.timesteps[:-1]``: the long multi-prompt pipeline always, the
#: DFR pipelines with ``LTXEulerAncestralRFScheduler`` (whose explicit schedule ends with its terminal 0).
_LAST_LEFT_OUT = {"LTXI2VLongMultiPromptPipeline": None, "LTX2DFRPipeline": "LTXEulerAncestralRFScheduler",
                  "LTX2DFRTemporalRefinePipeline": "LTXEulerAncestralRFScheduler"}


def terminal_steps(pipe: Any) -> int | None:
    """The steps of a pipeline's loop that leaves its schedule's last timestep out (``timesteps[:-1]``)."""
    name = type(pipe).__name__
    if name not in _LAST_LEFT_OUT:
        return None
    scheduler = pipe.scheduler
    needs = _LAST_LEFT_OUT[name]
    return len(scheduler.timesteps) - 1 if needs is None or type(scheduler).__name__ == needs else None


@hookimpl
def cachekit_adapters() -> list[type]:
    return [LTXAdapter]
