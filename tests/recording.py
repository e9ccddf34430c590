"""Forward hooks that record what the modules of a session's sites take and return, to compare each
reused or rebuilt value with the computed values it comes from (``check_cached_values``)."""

from __future__ import annotations

import torch

import cachekit
from cachekit.policy import ONLINE, RECONSTRUCT, REUSE


def _tensors(values) -> tuple[torch.Tensor, ...]:
    return tuple(v for v in values if isinstance(v, torch.Tensor))


class Recorder:
    """Forward hooks on the modules of the named sites: per node (step, site, branch) of the session's
    runs, the tensors the call took (positional, then keyword) and the ones it returned, which torch's
    hook sees whether cachekit computed, reused or rebuilt them. A call carrying several CFG branches is
    cut along dim 0 into them. Calls outside a run (uncached, profiling) are not recorded; the sites'
    enclosing sites must compute every branch they carry (the call then carries the denoiser's). The
    denoiser, whose calls end outside the run's bookkeeping, is recorded by counting its calls: start
    recording after the run that profiles the model, and record one run of a batched pipeline."""

    def __init__(self, session: cachekit.Session, names: list[str]) -> None:
        self.session = session
        self.inputs: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.outputs: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.denoiser_calls = 0
        sites = {site.name: site for site in session.adapter.sites()}
        self.handles = [module.register_forward_hook(self._record(name), with_kwargs=True)
                        for name in names for module in session.adapter.modules(sites[name])]

    def _position(self, name: str) -> tuple[int, tuple[str, ...]] | None:
        """The step of the call being recorded and the branches it carries."""
        if name == "denoiser":
            assert self.session.adapter.cfg_layout == "batched"
            self.denoiser_calls += 1
            return self.denoiser_calls - 1, self.session.plan.branches
        run = self.session.runtime.run
        return (run.step, run.present) if run is not None and run.present else None

    def _record(self, name: str):
        def record(module, args, kwargs, output):
            position = self._position(name)
            if position is None:
                return
            step, present = position
            carried = [b for b in self.session.adapter.call_order if b in present]  # in batch order
            n = len(carried)

            def cut(t, i):  # tensors that do not carry the batch (a rotary table) are kept whole
                return t.chunk(n)[i].clone() if t.ndim and t.shape[0] % n == 0 else t.clone()

            outputs = _tensors(output if isinstance(output, (tuple, list)) else (output,))
            for i, branch in enumerate(carried):
                key = (step, name, branch)
                self.inputs[key] = tuple(cut(t, i) for t in _tensors((*args, *kwargs.values())))
                self.outputs[key] = tuple(cut(t, i) for t in outputs)
        return record

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def check_cached_values(session: cachekit.Session, recorder: Recorder) -> int:
    """Every node of the session's last run that reused or rebuilt a recorded site returned exactly
    its sources' recorded values, through the plan's kernel (a residual site: the sources' outputs
    minus their inputs, then plus the current input). A planned reuse reads its source; an online
    node that reused reads the latest step of its site and branch that computed. Returns how many
    nodes were checked."""
    plan, executed = session.plan, session.report().executed
    sites = {site.name: site for site in plan.sites}
    checked = 0
    for node, action in plan.nodes():
        step, name, branch = node
        kind = executed.get(node)
        if node not in recorder.outputs or kind not in (REUSE, RECONSTRUCT):
            continue
        if action.kind == ONLINE:
            if kind != REUSE:
                continue  # an online reconstruction reads its history's slots: not followed here
            sources = [max(((s, name, branch) for s in range(step) if executed.get((s, name, branch)) == "compute"))]
        else:
            sources = list(action.sources)
        residual = sites[name].residual

        def stored(key):
            outputs = recorder.outputs[key]
            return tuple(o - i for o, i in zip(outputs, recorder.inputs[key])) if residual else outputs

        values = [stored(key) for key in sources]
        if kind == REUSE:
            expected = values[-1]
        else:
            kernel, params = cachekit.registry().get("kernel", action.kernel), dict(action.params)
            if params.get("layout") == "BLC":
                continue  # needs the call's frame grid
            if getattr(kernel, "uses_steps", False):
                params.update(steps=tuple(s[0] for s in sources), at=step)
            expected = tuple(kernel([v[k] for v in values], **params) for k in range(len(values[0])))
        if residual:
            expected = tuple(e + i for e, i in zip(expected, recorder.inputs[node]))
        got = recorder.outputs[node]
        assert len(got) == len(expected), node
        for k, (g, e) in enumerate(zip(got, expected)):
            assert torch.equal(g, e), (node, k, action.kind, kind, (g - e).abs().max().item())
        checked += 1
    return checked
