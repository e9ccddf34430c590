"""``generic``: an adapter described by data — a spec in TOML, JSON or YAML — instead of Python.

A spec is a mapping (a standalone file, or the ``[adapter]`` table of a config file)::

    [adapter]
    name = "my-dit"                      # registry name (default "generic")
    model_class = "MyDiT"                # class name(s) matched along the model's MRO
    cfg_layout = "batched"               # or "split"
    call_order = ["uncond", "cond"]      # along the batch (batched) or the calls (split)
    output_layout = "BCFHW"              # the model output's axes (CFG-Cache needs one)
    timestep = "timestep"                # the forward parameter that carries the timestep
    batch_inputs = ["rows"]              # optional: inputs carrying the CFG branches with a dim 0
                                         # other than the call's batch, at every site
    shared_inputs = ["rotary_emb"]       # optional: inputs shared by the CFG branches (the rest of
                                         # the inputs that carry the branches: detected from dim 0)
    stack = true                         # the block sites form the block stack (default true);
                                         # false where the model transforms the hidden states
                                         # between blocks (spatial/temporal reshapes, embeddings)
    example_inputs = "pkg.mod:function"  # optional: inputs of one forward, for dry-run costing
                                         # (``function(model, batch)`` returns (args, kwargs)), or
                                         # a table of keyword inputs, the hidden states first:

    [adapter.example_inputs]             # tensors per sample (the batch is prepended), or values
    hidden_states = { shape = [16, 4, 32, 32] }
    timestep = { shape = [], value = 500, dtype = "int64" }
    rotary_emb = { shape = [256, 64], batched = false }
    return_dict = false

    [[adapter.blocks]]                   # one entry per list of blocks, in call order
    list = "blocks"                      # a ModuleList of the model; block i is its i-th entry
    site = "blocks.{i}"                  # optional: the whole block as a site
    kind = "block"                       # the block site's kind (default "block")
    residual = true                      # default true; or the input names its outputs match
    sites = [                            # modules of each block, paths relative to it
      { name = "blocks.{i}.attn", path = "attn1", kind = "attn.joint" },
    ]

Sites are listed block index by block index, each list's block site before its children, and
the lists in the order given. Structure is checked when the spec is read; module paths and kinds
are checked against the model at enable (``Adapter.validate``).

Shipped specs (``specs/*.toml`` beside this module) describe models diffusers does not carry and
register as adapters of their own, so ``enable`` finds them by the model's class.
"""

from __future__ import annotations

import importlib
import math
import pathlib
import re
from typing import Any, Callable, ClassVar, Mapping

import torch

from cachekit.adapter import DOCS_ADAPTER, Adapter
from cachekit.config import load_file
from cachekit.errors import AdapterError, shown
from cachekit.registry import hookimpl
from cachekit.sites import Site

SPECS = pathlib.Path(__file__).parent / "specs"


def _is_strs(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, Mapping) for v in value)


#: The dtypes an example input may name.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
          "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}
#: The most axes, and elements per sample, an example tensor may have.
MAX_AXES, MAX_ELEMENTS = 8, 2**31
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def _is_shape(value: Any) -> bool:
    return (isinstance(value, list) and len(value) <= MAX_AXES
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value)
            and math.prod(value) <= MAX_ELEMENTS)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


#: What each spec key holds: (test, description).
_STR = (lambda v: isinstance(v, str), "a string")
_STRS = (_is_strs, "a list of strings")
_TYPES = {
    "name": _STR, "cfg_layout": _STR, "output_layout": _STR, "timestep": _STR, "path": _STR, "kind": _STR,
    "list": _STR, "site": _STR, "layout": _STR, "call_order": _STRS, "batch_inputs": _STRS,
    "shared_inputs": _STRS,
    "model_class": (lambda v: isinstance(v, str) or _is_strs(v), "a class name or a list of them"),
    "residual": (lambda v: isinstance(v, bool) or _is_strs(v), "true, false or a list of input names"),
    "stack": (lambda v: isinstance(v, bool), "true or false"),
    "blocks": (_is_tables, "a list of tables"), "sites": (_is_tables, "a list of tables"),
    "example_inputs": (lambda v: (isinstance(v, str) and bool(_FACTORY.fullmatch(v))) or isinstance(v, Mapping),
                       "a 'package.module:function' string or a table of input names"),
    "shape": (_is_shape, f"a list of at most {MAX_AXES} sizes >= 1 (per sample) with at most 2**31 elements"),
    "dtype": (lambda v: isinstance(v, str) and v in DTYPES, "one of " + ", ".join(DTYPES)),
    "value": (_is_number, "a finite number"),
    "batched": (lambda v: isinstance(v, bool), "true or false"),
}
_TOP = ("name", "model_class", "cfg_layout", "call_order", "output_layout", "timestep", "batch_inputs", "shared_inputs",
        "stack", "blocks", "example_inputs")
_EXAMPLE = ("shape", "dtype", "value", "batched")
_BLOCK = ("list", "site", "kind", "residual", "batch_inputs", "shared_inputs", "sites")
_SITE = ("name", "path", "kind", "residual", "batch_inputs", "shared_inputs", "layout")


def _check(table: Any, allowed: tuple[str, ...], required: tuple[str, ...], where: str) -> dict:
    """``table`` as a dict, once its keys are known, present where required and of their types."""
    if not isinstance(table, Mapping):
        raise AdapterError(f"{where}: expected a table with keys {', '.join(allowed)}, got {shown(table)}")
    unknown = [key for key in table if key not in allowed]
    if unknown:  # echoed values are bounded (shown): a YAML alias bomb stays a short line
        listed = ", ".join(shown(key) for key in unknown[:6]) + (", ..." if len(unknown) > 6 else "")
        raise AdapterError(f"{where}: unknown key(s) {listed}; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in table:
            raise AdapterError(f"{where}: missing '{key}'")
    for key, value in table.items():
        test, description = _TYPES[key]
        if not test(value):
            raise AdapterError(f"{where}: '{key}' = {shown(value)} should be {description}")
    return dict(table)


def _check_template(template: str, where: str) -> None:
    """A site name template may use ``{i}`` (the block index) and nothing else."""
    try:
        template.format(i=0)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as error:
        why = f"unknown field {{{error.args[0]}}}" if isinstance(error, KeyError) else " ".join(str(error).split())
        raise AdapterError(f"{where} = {shown(template)}: {why}; a site name may use {{i}}, the block index, and "
                           "{{ }} for literal braces") from None


def read_spec(spec: Mapping[str, Any] | str | pathlib.Path) -> dict:
    """The checked spec mapping from a mapping or a file (a file's ``[adapter]`` table if it has one)."""
    where = "adapter spec"
    if isinstance(spec, (str, pathlib.Path)):
        where = f"adapter spec {spec}"
        if not pathlib.Path(spec).is_file():
            raise AdapterError(f"{where}: no such file")
        spec = load_file(spec)
        spec = spec.get("adapter", spec)
    top = _check(spec, _TOP, ("model_class", "blocks"), where)
    for i, block in enumerate(top["blocks"]):
        entry = _check(block, _BLOCK, ("list",), f"{where}, blocks[{i}]")
        if "site" in entry:
            _check_template(entry["site"], f"{where}, blocks[{i}]: 'site'")
        for j, site in enumerate(entry.get("sites", [])):
            _check(site, _SITE, ("name", "path", "kind"), f"{where}, blocks[{i}].sites[{j}]")
            _check_template(site["name"], f"{where}, blocks[{i}].sites[{j}]: 'name'")
    if isinstance(top.get("example_inputs"), Mapping):
        _check_example_inputs(top["example_inputs"], f"{where}, example_inputs")
    return top


def _check_example_inputs(inputs: Mapping, where: str) -> None:
    """Keyword inputs: tensor tables (``shape`` required) or plain values, at least one tensor."""
    for name, value in inputs.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise AdapterError(f"{where}: input name {shown(name)} is not a parameter name")
        if isinstance(value, Mapping):
            _check(value, _EXAMPLE, ("shape",), f"{where}.{name}")
        elif not isinstance(value, (bool, int, float, str)):
            raise AdapterError(f"{where}.{name} = {shown(value)} should be a tensor table {{shape, dtype, value, "
                               "batched} or a plain value (bool, number, string)")
    if not any(isinstance(value, Mapping) for value in inputs.values()):
        raise AdapterError(f"{where}: no tensor input; give the hidden states first, e.g. hidden_states = "
                           "{ shape = [16, 4, 32, 32] }")


def _tuple(value: Any) -> Any:
    """Lists of names as tuples (what Site and Adapter hold); other values unchanged."""
    return tuple(value) if isinstance(value, list) else value


class GenericAdapter(Adapter):
    """An adapter built from a spec by :meth:`from_spec`; as registered, it claims no model."""

    name = "generic"
    model_classes = ()
    spec: ClassVar[dict] = {"blocks": []}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | str | pathlib.Path) -> type["GenericAdapter"]:
        """A new adapter class for ``spec`` (a mapping or a TOML/JSON/YAML file)."""
        data = read_spec(spec)
        classes = data["model_class"]
        body = {
            "name": data.get("name", "generic"),
            "model_classes": (classes,) if isinstance(classes, str) else tuple(classes),
            "cfg_layout": data.get("cfg_layout", "batched"),
            "call_order": tuple(data.get("call_order", ("uncond", "cond"))),
            "batch_kwargs": _tuple(data.get("batch_inputs")),
            "shared_kwargs": _tuple(data.get("shared_inputs")),
            "timestep_input": data.get("timestep", "timestep"),
            "spec": data,
        }
        return type(f"{cls.__name__}[{body['name']}]", (cls,), body)

    def sites(self) -> list[Site]:
        sites = [Site("denoiser", "denoiser", "", layout=self.spec.get("output_layout"))]
        groups = [(group, self._block_list(group["list"])) for group in self.spec["blocks"]]
        for i in range(max((len(blocks) for _, blocks in groups), default=0)):
            for group, blocks in groups:
                if i < len(blocks):
                    sites += self._block_sites(group, i)
        return sites

    def stack_blocks(self, sites: list[Site]) -> list[Site]:
        return super().stack_blocks(sites) if self.spec.get("stack", True) else []

    def example_call(self, batch: int) -> tuple[tuple, dict[str, Any]]:
        """The spec's ``example_inputs``: a factory's ``(args, kwargs)``, or its table's keyword inputs."""
        example = self.spec.get("example_inputs")
        if example is None:
            raise AdapterError(f"adapter '{self.name}' cannot build example inputs; declare example_inputs in its spec "
                               f"(see {DOCS_ADAPTER}) or run the pipeline once instead")
        if isinstance(example, str):
            return self._factory_call(example, batch)
        param = next(self.model.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        return (), {name: _example_tensor(value, batch, dtype, device) if isinstance(value, Mapping) else value
                    for name, value in example.items()}

    def _factory_call(self, target: str, batch: int) -> tuple[tuple, dict[str, Any]]:
        where = f"adapter '{self.name}': example_inputs '{target}'"
        module, _, attr = target.partition(":")
        try:
            factory: Callable = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as error:
            raise AdapterError(f"{where}: cannot load it ({type(error).__name__}: {shown(str(error))}); name an "
                               "importable module and a function in it") from None
        result = factory(self.model, batch)
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], (tuple, list))
                and isinstance(result[1], dict)):
            raise AdapterError(f"{where} returned {shown(result)}; return (args, kwargs): a tuple and a dict of the "
                               "model's inputs for a batch of `batch`")
        return tuple(result[0]), result[1]

    def _block_list(self, path: str) -> Any:
        try:
            blocks = self.model.get_submodule(path)
        except AttributeError:
            children = ", ".join(name for name, _ in self.model.named_children())
            raise AdapterError(f"adapter '{self.name}': block list '{path}' not found in {type(self.model).__name__} "
                               f"(it has {children})") from None
        if not hasattr(blocks, "__len__"):
            raise AdapterError(f"adapter '{self.name}': '{path}' is a {type(blocks).__name__}, not a list of blocks")
        return blocks

    def _block_sites(self, group: dict, i: int) -> list[Site]:
        block_path = f"{group['list']}.{i}"
        parent, sites = "denoiser", []
        if "site" in group:
            parent = group["site"].format(i=i)
            sites.append(Site(parent, group.get("kind", "block"), block_path, i, "denoiser",
                              residual=_tuple(group.get("residual", True)),
                              batch_inputs=_tuple(group.get("batch_inputs")),
                              shared_inputs=_tuple(group.get("shared_inputs"))))
        for entry in group.get("sites", []):
            sites.append(Site(entry["name"].format(i=i), entry["kind"], f"{block_path}.{entry['path']}", i, parent,
                              residual=_tuple(entry.get("residual", False)), layout=entry.get("layout"),
                              batch_inputs=_tuple(entry.get("batch_inputs")),
                              shared_inputs=_tuple(entry.get("shared_inputs"))))
        return sites


def _example_tensor(table: Mapping, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An example input filled with ``value`` (default 0): ``shape`` per sample, with the batch
    prepended unless ``batched = false``; ``dtype`` default: the model's floating dtype."""
    shape = ([batch] if table.get("batched", True) else []) + list(table["shape"])
    return torch.full(shape, table.get("value", 0), dtype=DTYPES.get(table.get("dtype"), dtype), device=device)


def shipped_specs() -> dict[str, pathlib.Path]:
    """Spec name -> file, for the specs shipped with cachekit."""
    return {path.stem: path for path in sorted(SPECS.glob("*.toml"))}


@hookimpl
def cachekit_adapters() -> list[type]:
    return [GenericAdapter, *(GenericAdapter.from_spec(path) for path in shipped_specs().values())]
