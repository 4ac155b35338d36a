"""OpenVLA (openvla/openvla-7b and its LIBERO fine-tunes), native, from the published folder.

Loads the HF-converted Prismatic folder as published (``config.json``, sharded
safetensors and their index, ``preprocessor_config.json``, the tokenizer files,
``dataset_statistics.json``) into :class:`~vla_steering.policies.prismatic.PrismaticVLA`
without the folder's remote code, checking every tensor.

A prediction, as OpenVLA's ``predict_action`` does it:

1. the image: optionally the LIBERO fine-tunes' evaluation center crop
   (``center_crop_scale``, the kept area fraction, 0.9 upstream; cropped and resized
   back to the input size, bilinear), then the folder's image processor per tower
   (resize, center crop, to [0, 1], normalise with that tower's mean/std);
2. the prompt ``In: What action should the robot take to {instruction}?\\nOut:``
   tokenised with BOS, plus Llama-2's empty token 29871;
3. greedy decoding of 7 action tokens: a prefill that always carries the image, then 6
   single-token steps on the KV cache (every one steered);
4. token ``t`` -> bin ``clip(vocab - 1 - t, 0, 254)`` -> the bin centre in [-1, 1] ->
   dataset units with the chosen statistics' q01/q99 where ``mask`` is true.

The statistics come from ``dataset_statistics.json`` when the folder has it (as
upstream prefers), else ``config.json``'s ``norm_stats``; ``unnorm_key`` picks the
dataset, and must be given when there are several. For LIBERO the gripper (1 open,
0 closed) is mapped to LIBERO's -1 open / +1 close, as OpenVLA's evaluation does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vla_steering.policies.base import LIBERO_EE_DELTA, PLACEHOLDER, Observation, Policy, instruction_span
from vla_steering.policies.checkpoint import empty_model, load_checked
from vla_steering.policies.prismatic import NOT_STORED, PrismaticConfig, PrismaticVLA, prismatic_converter

OPENVLA_PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
LLAMA2_EMPTY_TOKEN = 29871  # OpenVLA appends it to the prompt before generating
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class ActionTokenizer:
    """OpenVLA's 256-bin action tokens at the end of the (unpadded) vocabulary."""

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


def choose_statistics(norm_stats: Mapping, unnorm_key: str | None) -> Mapping:
    """The action statistics of one dataset, with the reason when the key is missing or ambiguous."""
    if not unnorm_key:
        if len(norm_stats) != 1:
            raise ValueError(f"this checkpoint has statistics for several datasets; choose unnorm_key among "
                             f"{sorted(norm_stats)}")
        unnorm_key = next(iter(norm_stats))
    if unnorm_key not in norm_stats:
        raise ValueError(f"unnorm_key {unnorm_key!r} is not in the checkpoint's statistics {sorted(norm_stats)}")
    return norm_stats[unnorm_key]["action"]


def center_crop(image, scale: float):
    """Keep the central ``scale`` of the area and resize back to the same size (OpenVLA's LIBERO eval)."""
    from PIL import Image

    if scale >= 1.0:
        return image
    width, height = image.size
    side = math.sqrt(scale)
    crop_w, crop_h = width * side, height * side
    box = ((width - crop_w) / 2, (height - crop_h) / 2, (width + crop_w) / 2, (height + crop_h) / 2)
    return image.resize((width, height), Image.Resampling.BILINEAR, box=box)


class PrismaticImageProcessor:
    """The folder's ``preprocessor_config.json`` (PrismaticImageProcessor), without torchvision.

    Per tower: resize (PIL, the configured interpolation, which antialiases like
    torchvision's PIL path), center crop, ``to_tensor``, normalise with ``tvf_normalize_params``
    (what the upstream processor applies), stacked on the channel axis.
    """

    INTERPOLATIONS = {2: "BILINEAR", 3: "BICUBIC", "bilinear": "BILINEAR", "bicubic": "BICUBIC"}

    def __init__(self, config: Mapping):
        if config.get("image_resize_strategy", "resize-naive") not in ("resize-naive", "letterbox"):
            raise ValueError(f"image_resize_strategy {config['image_resize_strategy']!r} is not supported")
        self.letterbox = bool(config.get("tvf_do_letterbox", False))
        self.fill = tuple(config.get("tvf_letterbox_fill") or (0, 0, 0))
        resize = config.get("tvf_resize_params")
        crop = config.get("tvf_crop_params")
        normalize = config.get("tvf_normalize_params")
        if not (resize and crop and normalize and len(resize) == len(crop) == len(normalize)):
            raise ValueError("preprocessor_config.json lacks tvf_resize_params / tvf_crop_params / "
                             "tvf_normalize_params for every tower")
        self.towers = []
        for r, c, n in zip(resize, crop, normalize):
            interpolation = self.INTERPOLATIONS.get(r.get("interpolation", 3))
            if interpolation is None:
                raise ValueError(f"interpolation {r.get('interpolation')!r} is not supported")
            self.towers.append((tuple(r["size"]), interpolation, tuple(c["output_size"]),
                                np.asarray(n["mean"], np.float32), np.asarray(n["std"], np.float32)))

    def __call__(self, image) -> torch.Tensor:
        """PIL RGB image -> (1, 3 * towers, H, W) float32."""
        from PIL import Image, ImageOps

        if self.letterbox:
            side = max(image.size)
            image = ImageOps.pad(image, (side, side), color=self.fill)
        channels = []
        for size, interpolation, crop, mean, std in self.towers:
            resized = image.resize((size[1], size[0]), getattr(Image.Resampling, interpolation))
            cropped = ImageOps.fit(resized, (crop[1], crop[0]), centering=(0.5, 0.5)) \
                if resized.size != (crop[1], crop[0]) else resized
            array = np.asarray(cropped, np.float32) / 255.0
            channels.append(((array - mean) / std).transpose(2, 0, 1))
        return torch.from_numpy(np.concatenate(channels, axis=0)[None])


class OpenVLAPolicy(Policy):
    """Args:
        model: the Prismatic VLA.
        tokenizer: the folder's Llama-2 tokenizer.
        image_processor: the folder's image processor.
        action_stats: q01/q99/mask of the chosen dataset.
        action_vocab_size: the vocabulary size the action bins count back from (32000).
        center_crop_scale: area kept by the evaluation center crop (1 = none; 0.9 for the LIBERO fine-tunes).
        for_libero: map the gripper to LIBERO's convention.
    """

    action_space = LIBERO_EE_DELTA

    def __init__(self, model: PrismaticVLA, tokenizer, image_processor: PrismaticImageProcessor,
                 action_stats: Mapping, action_vocab_size: int, center_crop_scale: float = 1.0,
                 for_libero: bool = True):
        if not 0.0 < center_crop_scale <= 1.0:
            raise ValueError(f"center_crop_scale must be in (0, 1], got {center_crop_scale}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.action_stats = action_stats
        self.tokens = ActionTokenizer(action_vocab_size)
        self.center_crop_scale = center_crop_scale
        self.for_libero = for_libero

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, unnorm_key: str | None = None, dtype: str = "bfloat16",
                        device: str = "cpu", center_crop_scale: float = 1.0) -> OpenVLAPolicy:
        from transformers import LlamaTokenizer

        path = Path(checkpoint).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"OpenVLA checkpoint {path} not found (a local directory with config.json)")
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") not in ("openvla", "prismatic"):
            raise ValueError(f"{path}/config.json has model_type {config.get('model_type')!r}, not openvla")
        statistics_file = path / "dataset_statistics.json"
        norm_stats = json.loads(statistics_file.read_text()) if statistics_file.exists() else config.get("norm_stats")
        if not norm_stats:
            raise FileNotFoundError(f"{path} has neither dataset_statistics.json nor norm_stats in config.json")
        action_stats = choose_statistics(norm_stats, unnorm_key)
        preprocessor = path / "preprocessor_config.json"
        if not preprocessor.exists():
            raise FileNotFoundError(f"{path} has no preprocessor_config.json")
        image_processor = PrismaticImageProcessor(json.loads(preprocessor.read_text()))
        with empty_model(DTYPES[dtype]):
            model = PrismaticVLA(PrismaticConfig.from_openvla_config(config))
        load_checked(model, path, prismatic_converter(model), not_stored=NOT_STORED)
        with torch.no_grad():
            model.vision_backbone.featurizer.embeddings.mask_token.zero_()
        tokenizer = LlamaTokenizer.from_pretrained(path, local_files_only=True)
        vocab = model.language_model.config.vocab_size - int(config.get("pad_to_multiple_of", 0) or 0)
        return cls(model.to(device), tokenizer, image_processor, action_stats, vocab, center_crop_scale)

    # ----------------------------------------------------------- the stages
    def prompt_ids(self, instruction: str) -> list[int]:
        """The prompt's token ids as OpenVLA's processor gives them (the empty token appended)."""
        ids = self.tokenizer(OPENVLA_PROMPT.format(instruction=instruction.strip().lower())).input_ids
        return ids if ids[-1] == LLAMA2_EMPTY_TOKEN else [*ids, LLAMA2_EMPTY_TOKEN]

    def model_inputs(self, observation: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values (1, 6, H, W) float32, input_ids (1, L)) as OpenVLA's processor gives them."""
        from PIL import Image

        image = center_crop(Image.fromarray(next(iter(observation.images.values()))), self.center_crop_scale)
        return self.image_processor(image), torch.tensor([self.prompt_ids(observation.instruction)])

    def instruction_positions(self, observation: Observation) -> slice:
        # the language model sees [BOS] + patches + the rest of the prompt: the prompt's tail ends the prefill
        return instruction_span(self.prompt_ids(observation.instruction), self.prompt_ids(PLACEHOLDER), tail=0)

    @torch.inference_mode()
    def decode(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
               steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Greedy decoding: (token ids (steps,), logits of every forward (steps, V) float32)."""
        from transformers import DynamicCache

        steps = steps or self.action_space.dim
        device = self.model.get_input_embeddings().weight.device
        logits, cache = self.model(input_ids.to(device), pixel_values.to(device), DynamicCache())
        tokens, all_logits = [], []
        for step in range(steps):
            all_logits.append(logits.float())
            token = logits.argmax(dim=-1)
            tokens.append(token)
            if step < steps - 1:
                logits, cache = self.model(token[:, None], None, cache)
        return torch.cat(tokens).cpu().numpy(), torch.cat(all_logits).cpu().numpy()

    def actions_from_tokens(self, token_ids: Sequence[int]) -> np.ndarray:
        """(7,) actions in dataset units (the gripper as the dataset has it)."""
        return unnormalize(self.tokens.decode(np.asarray(token_ids)), self.action_stats)

    def predict(self, observation: Observation) -> np.ndarray:
        pixel_values, input_ids = self.model_inputs(observation)
        tokens, _ = self.decode(pixel_values, input_ids)
        actions = self.actions_from_tokens(tokens)[None]  # (1, 7)
        return libero_gripper(actions) if self.for_libero else actions
