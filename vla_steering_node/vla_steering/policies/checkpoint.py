"""Load a published checkpoint folder's tensors into a native model, checking every one.

A native backend builds its model from transformers' modules, then hands this module
a *converter*: a function from one published tensor (name, value) to the model
parameters it fills (a rename, a split of a fused projection, a tie). Loading streams
the safetensors files one tensor at a time, so peak memory is the model plus one
tensor, and refuses the checkpoint — never initialises at random — when

* a published tensor is one the converter does not know (``unexpected``),
* a model parameter is filled by no published tensor (``missing``), except the few a
  backend declares as not part of the published format (e.g. DINOv2's mask token),
* a tensor's shape differs from the parameter it fills (``mis-shaped``),
* two published tensors fill the same parameter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

Converter = Callable[[str, torch.Tensor], Mapping[str, torch.Tensor] | None]
"""(published name, tensor) -> {model parameter name: value}; {} = known and unused; None = unknown."""

MAX_NAMES = 8  # how many names an error lists per kind


class CheckpointError(ValueError):
    """A checkpoint folder that does not hold what its model needs."""


@contextmanager
def empty_model(dtype: torch.dtype) -> Iterator[None]:
    """Build a model with parameters of ``dtype``, uninitialised (the checkpoint fills them all)."""
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            yield
    finally:
        torch.set_default_dtype(previous)


def renaming_converter(prefixes: Sequence[tuple[str, str]], exact: Mapping[str, str | None] | None = None) -> Converter:
    """A converter that renames: a name in ``exact`` fills that one parameter (None: known and unused), else the
    first of ``prefixes`` (published prefix, model prefix) it starts with is replaced; any other name is unknown."""
    exact = dict(exact or {})

    def convert(name: str, tensor: torch.Tensor) -> Mapping[str, torch.Tensor] | None:
        if name in exact:
            return {} if exact[name] is None else {exact[name]: tensor}
        for prefix, target in prefixes:
            if name.startswith(prefix):
                return {target + name[len(prefix):]: tensor}
        return None

    return convert


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a folder: the shards its index names, else ``model.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise CheckpointError(f"{folder}: shards named by {index.name} are missing: {absent}")
        return files
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    weights = [f for f in found if "processor" not in f.name]  # LeRobot keeps normaliser statistics beside
    if not weights:
        raise CheckpointError(f"{folder} holds no model.safetensors (nor a sharded index)")
    return weights


def tensor_names(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every published tensor's name and shape, without reading the values."""
    from safetensors import safe_open

    names = {}
    for file in safetensors_files(folder):
        with safe_open(file, "pt") as handle:
            for name in handle.keys():
                names[name] = tuple(handle.get_slice(name).get_shape())
    return names


def _listing(kind: str, names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:MAX_NAMES]) + (f", ... ({len(names)} in all)" if len(names) > MAX_NAMES else "")
    return f"{len(names)} {kind}: {shown}"


def load_checked(model: nn.Module, folder: Path, convert: Converter, not_stored: Iterable[str] = ()) -> None:
    """Fill every parameter and persistent buffer of ``model`` from ``folder``'s tensors.

    Args:
        model: the native model, built with the folder's dimensions (its values are overwritten).
        folder: the checkpoint folder.
        convert: maps each published tensor to the parameters it fills.
        not_stored: parameter names the published format does not carry; the backend sets them.

    Raises:
        CheckpointError: naming every missing, unexpected and mis-shaped tensor.
    """
    from safetensors import safe_open

    targets = dict(model.state_dict(keep_vars=True))
    not_stored = set(not_stored)
    filled: set[str] = set()
    unexpected: list[str] = []
    misshaped: list[str] = []
    twice: list[str] = []
    for file in safetensors_files(folder):
        with safe_open(file, "pt") as handle:
            for name in handle.keys():
                converted = convert(name, handle.get_tensor(name))
                if converted is None:
                    unexpected.append(name)
                    continue
                for target, value in converted.items():
                    if target not in targets:
                        unexpected.append(f"{name} (as {target})")
                    elif tuple(value.shape) != tuple(targets[target].shape):
                        misshaped.append(f"{name} {tuple(value.shape)} (model needs {tuple(targets[target].shape)})")
                    elif target in filled:
                        twice.append(target)
                    else:
                        with torch.no_grad():
                            targets[target].copy_(value)
                        filled.add(target)
    missing = set(targets) - filled - not_stored
    problems = [_listing(kind, names) for kind, names in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                 ("filled twice", twice)) if names]
    if problems:
        raise CheckpointError(f"{folder} does not fit {type(model).__name__}: " + "; ".join(problems))
