"""OpenVLA (openvla/openvla-7b and its LIBERO fine-tunes) through transformers.

The checkpoint directory carries its own modelling code (Prismatic), loaded with
``trust_remote_code``; nothing is downloaded. A prediction generates 7 action
tokens (prefill + 6 decode steps, all steered) and de-tokenises them as OpenVLA
does: the last 256 ids of the (unpadded) vocabulary are 256 uniform bins over
[-1, 1]; token ``vocab_size - k`` is bin ``k - 1``'s centre. Normalised actions are
mapped back with the checkpoint's dataset statistics (``norm_stats[key]["action"]``:
``q01``, ``q99``, ``mask``). For LIBERO the gripper (0 = close ... 1 = open after
un-normalisation) is mapped to LIBERO's -1 open / +1 close, as OpenVLA's evaluation does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vla_steering.policies.base import LIBERO_EE_DELTA, Observation, Policy
from vla_steering.policies.libero import resize_image

OPENVLA_PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
LLAMA2_EMPTY_TOKEN = 29871  # OpenVLA appends it to the prompt before generating


class ActionTokenizer:
    """OpenVLA's 256-bin action tokens at the end of the vocabulary."""

    def __init__(self, vocab_size: int, bins: int = 256):
        self.vocab_size = vocab_size
        self.edges = np.linspace(-1.0, 1.0, bins)
        self.centers = (self.edges[:-1] + self.edges[1:]) / 2.0

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        index = np.clip(self.vocab_size - np.asarray(token_ids) - 1, 0, len(self.centers) - 1)
        return self.centers[index]

    def encode(self, actions: np.ndarray) -> np.ndarray:
        return self.vocab_size - np.digitize(np.clip(actions, -1.0, 1.0), self.edges)


def unnormalize(actions: np.ndarray, stats: Mapping[str, list[float]]) -> np.ndarray:
    """[-1, 1] -> dataset units with the 1st/99th percentiles, where ``mask`` is true."""
    low, high = np.asarray(stats["q01"]), np.asarray(stats["q99"])
    mask = np.asarray(stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    return np.where(mask, 0.5 * (actions + 1.0) * (high - low) + low, actions)


def libero_gripper(actions: np.ndarray) -> np.ndarray:
    """OpenVLA's gripper (1 open, 0 closed) -> LIBERO's (-1 open, +1 closed), binarised."""
    out = actions.copy()
    out[..., -1] = -np.sign(2.0 * out[..., -1] - 1.0)
    return out


class OpenVLAPolicy(Policy):
    """Args:
        model: a vision-to-sequence model with ``generate(**inputs)`` (OpenVLA's Prismatic).
        processor: makes ``input_ids``/``pixel_values`` from (text, PIL image).
        norm_stats: the checkpoint's ``norm_stats``; ``unnorm_key`` picks the dataset.
        action_vocab_size: vocabulary size the action bins count back from.
        empty_token_id: appended to the prompt if missing (Llama-2's 29871); None skips.
    """

    action_space = LIBERO_EE_DELTA

    def __init__(self, model: nn.Module, processor: Callable, norm_stats: Mapping, unnorm_key: str | None = None,
                 action_vocab_size: int | None = None, prompt: str = OPENVLA_PROMPT,
                 empty_token_id: int | None = LLAMA2_EMPTY_TOKEN, image_size: int = 224, for_libero: bool = True):
        self.model = model.eval()
        self.processor = processor
        if unnorm_key is None:
            if len(norm_stats) != 1:
                raise ValueError(f"choose unnorm_key among {sorted(norm_stats)}")
            unnorm_key = next(iter(norm_stats))
        if unnorm_key not in norm_stats:
            raise ValueError(f"unnorm_key {unnorm_key!r} not in the checkpoint's statistics {sorted(norm_stats)}")
        self.action_stats = norm_stats[unnorm_key]["action"]
        if action_vocab_size is None:
            text = getattr(model.config, "text_config", model.config)
            action_vocab_size = text.vocab_size - getattr(model.config, "pad_to_multiple_of", 0)
        self.tokens = ActionTokenizer(action_vocab_size)
        self.prompt = prompt
        self.empty_token_id = empty_token_id
        self.image_size = image_size
        self.for_libero = for_libero

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, unnorm_key: str | None = None,
                        dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> OpenVLAPolicy:
        from transformers import AutoConfig, AutoProcessor
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        path = Path(checkpoint).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"OpenVLA checkpoint {path} not found (a local directory with config.json)")
        config = AutoConfig.from_pretrained(path, trust_remote_code=True, local_files_only=True)
        auto_map = getattr(config, "auto_map", {})
        if "AutoModelForVision2Seq" not in auto_map:
            raise ValueError(f"{path}/config.json maps no AutoModelForVision2Seq class: not an OpenVLA checkpoint")
        # the checkpoint's own modelling code (Prismatic), as registered in its config
        model_class = get_class_from_dynamic_module(auto_map["AutoModelForVision2Seq"], str(path))
        model = model_class.from_pretrained(path, config=config, local_files_only=True, dtype=dtype).to(device)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True, local_files_only=True)
        stats = getattr(model.config, "norm_stats", None)
        if not stats and (path / "dataset_statistics.json").exists():
            stats = json.loads((path / "dataset_statistics.json").read_text())
        if not stats:
            raise FileNotFoundError(f"{path} has no norm_stats in config.json nor dataset_statistics.json")
        return cls(model, processor, stats, unnorm_key)

    @torch.inference_mode()
    def predict(self, observation: Observation) -> np.ndarray:
        from PIL import Image

        image = Image.fromarray(resize_image(next(iter(observation.images.values())), self.image_size))
        prompt = self.prompt.format(instruction=observation.instruction.strip().lower().rstrip("."))
        inputs = self.processor(text=prompt, images=image, return_tensors="pt")
        ids = inputs["input_ids"]
        if self.empty_token_id is not None and ids[0, -1] != self.empty_token_id:
            inputs["input_ids"] = torch.cat([ids, torch.tensor([[self.empty_token_id]])], dim=1)
            if "attention_mask" in inputs:
                inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], 1)
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        inputs = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in inputs.items()}
        dim = self.action_space.dim
        generated = self.model.generate(**inputs, max_new_tokens=dim, min_new_tokens=dim, do_sample=False)
        normalized = self.tokens.decode(generated[0, -dim:].cpu().numpy())
        actions = unnormalize(normalized, self.action_stats)[None]  # (1, 7)
        return libero_gripper(actions) if self.for_libero else actions
