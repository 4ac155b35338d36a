"""LeRobot 0.4 policy folders without LeRobot: ``config.json`` and the processor pipelines.

Since LeRobot 0.4 a policy folder carries ``policy_preprocessor.json`` and
``policy_postprocessor.json``: ordered steps (rename, batch, tokenise, normalise, ...)
with their statistics in ``<pipeline>_step_<i>_<name>.safetensors``. This module reads
them and applies them as LeRobot does; a step it does not know is an error naming it.

Normalisation modes (per feature type, ``norm_map``), as LeRobot computes them:
``MEAN_STD`` ``(x - mean) / (std + eps)`` (inverse ``x * std + mean``); ``MIN_MAX``
``2 (x - min) / (max - min) - 1``; ``QUANTILES`` / ``QUANTILE10`` the same with
q01/q99 or q10/q90 (a zero range replaced by ``eps``); ``IDENTITY`` nothing.

The tokenizer a tokenizer step names by hub id is taken from a local path when one is
given, else from the local Hugging Face cache by that name; it is never downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

QUANTILE_KEYS = {"QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90")}


class ProcessorError(ValueError):
    """A processor file this project cannot apply faithfully."""


def read_policy_config(folder: Path, policy_type: str) -> dict:
    """The folder's ``config.json``, checked to be a LeRobot policy of ``policy_type``."""
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{policy_type} checkpoint {folder} not found (a local directory with config.json)")
    config = json.loads(path.read_text())
    if config.get("type") != policy_type:
        raise ValueError(f"{path} describes a {config.get('type')!r} policy, not {policy_type!r}")
    return config


def local_folder(name: str, local_path: str | Path | None, what: str, option: str) -> Path:
    """``local_path``, else the snapshot of hub id ``name`` in the local Hugging Face cache; never downloaded.

    Args:
        what: what the folder holds, for the error ("the policy's tokenizer").
        option: the option that names a local folder instead, for the error.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if local_path:
        source = Path(local_path).expanduser()
        if not source.is_dir():
            raise FileNotFoundError(f"{what} folder {source} does not exist")
        return source
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{what} {name!r} is not in the local Hugging Face cache and is never downloaded here; pass the "
            f"path of a folder holding it as {option}") from error


def load_tokenizer(name: str, local_path: str | Path | None = None):
    """A tokenizer from ``local_path``, else from the local Hugging Face cache by ``name``; never downloaded."""
    from transformers import AutoTokenizer

    source = local_folder(name, local_path, "the policy's tokenizer",
                          "tokenizer (a folder with tokenizer.json, tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(str(source), local_files_only=True)


@dataclass
class Normalizer:
    """One (un)normaliser step: statistics per feature and the mode per feature type."""

    stats: Mapping[str, Mapping[str, torch.Tensor]]
    modes: Mapping[str, str]  # feature key -> mode
    eps: float

    @classmethod
    def from_step(cls, step: Mapping, folder: Path) -> Normalizer:
        from safetensors.torch import load_file

        config = step.get("config", {})
        state_file = step.get("state_file")
        if not state_file or not (folder / state_file).exists():
            raise ProcessorError(f"{step['registry_name']} names statistics {state_file!r} that {folder} lacks")
        flat = load_file(folder / state_file)
        stats: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in flat.items():
            feature, statistic = key.rsplit(".", 1)
            stats.setdefault(feature, {})[statistic] = value.float()
        norm_map = config.get("norm_map", {})
        modes = {}
        for key, feature in config.get("features", {}).items():
            mode = norm_map.get(feature.get("type"), "IDENTITY")
            if mode not in ("IDENTITY", "MEAN_STD", "MIN_MAX", *QUANTILE_KEYS):
                raise ProcessorError(f"normalisation mode {mode!r} of {key!r} is not supported")
            if mode != "IDENTITY" and key not in stats:
                raise ProcessorError(f"{state_file} has no statistics for {key!r}")
            modes[key] = mode
        return cls(stats, modes, float(config.get("eps", 1e-8)))

    def _range(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        mode, stats = self.modes[key], self.stats[key]
        low_key, high_key = QUANTILE_KEYS.get(mode, ("min", "max"))
        low, high = stats[low_key], stats[high_key]
        span = high - low
        return low, torch.where(span == 0, torch.full_like(span, self.eps), span)

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        mode = self.modes.get(key, "IDENTITY")
        if mode == "IDENTITY":
            return x
        if mode == "MEAN_STD":
            return (x - self.stats[key]["mean"]) / (self.stats[key]["std"] + self.eps)
        low, span = self._range(key)
        return 2.0 * (x - low) / span - 1.0

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        mode = self.modes.get(key, "IDENTITY")
        if mode == "IDENTITY":
            return x
        if mode == "MEAN_STD":
            return x * self.stats[key]["std"] + self.stats[key]["mean"]
        low, span = self._range(key)
        return (x + 1.0) / 2.0 * span + low


Batch = dict[str, object]
Step = Callable[[Batch], Batch]


@dataclass
class Pipeline:
    """An ordered list of steps read from a LeRobot processor file."""

    name: str
    steps: list[tuple[str, Step]] = field(default_factory=list)

    def __call__(self, batch: Batch) -> Batch:
        for _, step in self.steps:
            batch = step(batch)
        return batch


def _rename(config: Mapping) -> Step:
    rename_map = dict(config.get("rename_map", {}))
    return lambda batch: {rename_map.get(k, k): v for k, v in batch.items()}


def _to_batch(batch: Batch) -> Batch:
    out = {}
    for key, value in batch.items():
        if isinstance(value, str):
            out[key] = [value]
        elif isinstance(value, torch.Tensor) and key.startswith("observation.images.") and value.ndim == 3:
            out[key] = value[None]
        elif isinstance(value, torch.Tensor) and key.startswith(("observation.state", "action")) and value.ndim == 1:
            out[key] = value[None]
        else:
            out[key] = value
    return out


def _new_line(batch: Batch) -> Batch:
    tasks = batch.get("task")
    if tasks is None:
        return batch
    return {**batch, "task": [t if t.endswith("\n") else f"{t}\n" for t in tasks]}


def _tokenize(config: Mapping, tokenizer) -> Step:
    task_key = config.get("task_key", "task")

    def tokenize(batch: Batch) -> Batch:
        if task_key not in batch:
            raise ProcessorError(f"the tokenizer step needs {task_key!r} in the batch")
        tokenizer.padding_side = config.get("padding_side", "right")
        encoded = tokenizer(list(batch[task_key]), max_length=int(config.get("max_length", 48)),
                            padding=config.get("padding", "max_length"),
                            truncation=bool(config.get("truncation", True)), return_tensors="pt")
        return {**batch, "observation.language.tokens": encoded["input_ids"],
                "observation.language.attention_mask": encoded["attention_mask"].bool()}

    return tokenize


def _normalize(normalizer: Normalizer, inverse: bool) -> Step:
    def apply(batch: Batch) -> Batch:
        out = dict(batch)
        for key in normalizer.modes:
            if key in out and isinstance(out[key], torch.Tensor):
                value = out[key].float()
                out[key] = normalizer.unnormalize(key, value) if inverse else normalizer.normalize(key, value)
        return out

    return apply


def read_pipeline(folder: Path, file_name: str, tokenizer_path: str | Path | None = None,
                  known_steps: Mapping[str, Callable[[Mapping], Step]] | None = None) -> Pipeline:
    """Read ``folder/file_name`` (a LeRobot ``PolicyProcessorPipeline``) into callable steps.

    Args:
        known_steps: extra, policy-specific steps (registry name -> a function from the step's ``config``
            to the step).
    """
    path = folder / file_name
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {file_name} (LeRobot >= 0.4 writes it beside config.json)")
    spec = json.loads(path.read_text())
    pipeline = Pipeline(spec.get("name", file_name))
    for step in spec.get("steps", []):
        name = step.get("registry_name")
        config = step.get("config", {})
        if name == "rename_observations_processor":
            pipeline.steps.append((name, _rename(config)))
        elif name == "to_batch_processor":
            pipeline.steps.append((name, _to_batch))
        elif name == "device_processor":  # device and dtype are the policy's own here
            continue
        elif name == "tokenizer_processor":
            tokenizer = load_tokenizer(config.get("tokenizer_name", ""), tokenizer_path)
            pipeline.steps.append((name, _tokenize(config, tokenizer)))
        elif name in ("normalizer_processor", "unnormalizer_processor"):
            pipeline.steps.append((name, _normalize(Normalizer.from_step(step, folder),
                                                    inverse=name == "unnormalizer_processor")))
        elif known_steps and name in known_steps:
            pipeline.steps.append((name, known_steps[name](config)))
        else:
            raise ProcessorError(f"{path}: processor step {name!r} is not supported by this backend")
    return pipeline


NEW_LINE_STEPS = {"pi0_new_line_processor": lambda config: _new_line,
                  "smolvla_new_line_processor": lambda config: _new_line}
