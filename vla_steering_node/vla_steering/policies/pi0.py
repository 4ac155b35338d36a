"""pi0 from a LeRobot (>= 0.4) or an openpi PyTorch folder, native, on transformers' ``PI0ForConditionalGeneration``.

A LeRobot folder as LeRobot writes it: ``config.json`` (type ``pi0``), ``model.safetensors``
with LeRobot's names (``model.paligemma_with_expert...``), and the processor pipelines with
their statistics. An openpi folder as openpi's conversion writes it: the same names without the
leading ``model.``, openpi's small ``config.json`` and ``assets/*/norm_stats.json``; its inputs
and outputs go through openpi's ``pi0_libero`` transforms
(:mod:`vla_steering.policies.openpi_processing`). No LeRobot, no openpi, no torchvision.

* **Dimensions** come from the folder: chunk size, state/action padding, denoising
  steps and image resolution from ``config.json``; the two Gemmas' widths, depths, MLP
  sizes and head sizes from the tensors' shapes (pi0's Gemmas have one KV head).
* **Weights**: every published tensor is mapped onto transformers' PI0 and checked
  (:mod:`vla_steering.policies.checkpoint`). The token embedding is tied to
  ``paligemma.lm_head.weight`` (LeRobot does not store it); the expert's ``lm_head``
  is published but unused, so the expert gets no embedding table at all.
* **Inputs**: the preprocessor pipeline (newline, tokenizer, state normalisation);
  images as LeRobot 0.4 prepares them: float [0, 1], ``resize_with_pad`` to the
  configured resolution (bilinear, aspect kept, padded with -1 before scaling, as
  0.4.4 does), then ``2x - 1`` (openpi: PIL's bilinear resize with black padding);
  cameras in the folder's feature order, absent ones as masked -1 images. Cameras are
  matched by name (``observation.images.<name>``), else in order.
* **Flow matching**: the PaliGemma prefix runs once; ``num_inference_steps`` Euler
  steps ``x <- x + dt v(x, t)`` from ``t = 1``, ``dt = -1/steps`` run the action
  expert on the prefix's KV cache. The noise is drawn from a generator seeded by
  ``seed`` for every prediction, so equal observations give equal chunks.
* **Outputs**: the first ``action_dim`` dimensions, un-normalised by the
  postprocessor; ``n_action_steps`` of the chunk are returned.

The action expert reads each VLM layer's keys and values, which are computed before
that layer's MLP: the last VLM layer's MLP cannot change the actions, and concepts
on it are refused (:meth:`Pi0Policy.inert_layers`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla_steering.policies.base import LIBERO_EE_DELTA, PLACEHOLDER, Observation, Policy, instruction_span
from vla_steering.policies.checkpoint import (
    CheckpointError,
    Converter,
    empty_model,
    load_checked,
    renaming_converter,
    tensor_names,
)
from vla_steering.policies.lerobot_processing import NEW_LINE_STEPS, Pipeline, read_pipeline, read_policy_config
from vla_steering.policies.openpi_processing import (
    is_openpi_folder,
    openpi_family,
    openpi_pipelines,
    read_openpi_folder,
    resize_with_pad_pil,
)

VLM_STACK = "model.vlm.language_model.layers"
EXPERT_STACK = "model.dit.layers"
IMAGE_TOKEN_ID = 257152  # PaliGemma's image placeholder: one past the vocabulary
TOKENS_PER_IMAGE = 256
VelocityField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x, t) -> v(x, t): one denoising step's velocity, given a prefix computed once per prediction."""


@dataclass(frozen=True)
class GemmaDims:
    width: int
    depth: int
    mlp: int
    heads: int
    head_dim: int

    def config(self) -> dict:
        return {"model_type": "gemma", "hidden_size": self.width, "num_hidden_layers": self.depth,
                "intermediate_size": self.mlp, "num_attention_heads": self.heads, "num_key_value_heads": 1,
                "head_dim": self.head_dim, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6}


@dataclass(frozen=True)
class FlowConfig:
    """The flow-matching sizes a prediction needs, from a LeRobot ``config.json`` (pi0.5, SmolVLA)."""

    chunk_size: int
    max_state_dim: int
    max_action_dim: int
    num_inference_steps: int
    min_period: float
    max_period: float

    @staticmethod
    def fields_of(config: Mapping, steps_key: str = "num_inference_steps") -> dict:
        return {"chunk_size": int(config["chunk_size"]), "max_state_dim": int(config["max_state_dim"]),
                "max_action_dim": int(config["max_action_dim"]), "num_inference_steps": int(config[steps_key]),
                "min_period": float(config.get("min_period", 4e-3)),
                "max_period": float(config.get("max_period", 4.0))}


def gemma_dims(shapes: Mapping[str, tuple[int, ...]], layers: str) -> GemmaDims:
    """A Gemma stack's dimensions from its published tensors' shapes (one KV head, as pi0's)."""
    depth = len({m[1] for name in shapes if (m := re.match(re.escape(layers) + r"\.(\d+)\.", name))})
    first = f"{layers}.0."
    try:
        q, k = shapes[first + "self_attn.q_proj.weight"], shapes[first + "self_attn.k_proj.weight"]
        mlp = shapes[first + "mlp.gate_proj.weight"][0]
    except KeyError as missing:
        raise CheckpointError(f"no Gemma layers under {layers}. (missing {missing}); published names start "
                              f"with {sorted(shapes)[:3]}") from None
    head_dim = k[0]  # one KV head
    return GemmaDims(width=q[1], depth=depth, mlp=mlp, heads=q[0] // head_dim, head_dim=head_dim)


def paligemma_config(text: GemmaDims, vocab: int, resolution: int) -> dict:
    """The PaliGemma of pi0 and pi0.5: SigLIP so400m/14 at ``resolution`` and a Gemma of ``text``'s dimensions."""
    return {"model_type": "paligemma", "text_config": {**text.config(), "vocab_size": vocab},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                              "num_hidden_layers": 27, "num_attention_heads": 16, "patch_size": 14,
                              "image_size": resolution, "vision_use_head": False},
            "projection_dim": text.width, "image_token_id": IMAGE_TOKEN_ID}


def pi0_converter(root: str) -> Converter:
    """Published pi0 names (``root`` = ``"model."`` for LeRobot, ``""`` for openpi) -> transformers' PI0.

    The token embedding is tied to ``paligemma.lm_head``; the expert's ``lm_head`` is published but unused.
    """
    pali = f"{root}paligemma_with_expert.paligemma."
    expert = f"{root}paligemma_with_expert.gemma_expert."
    heads = [(f"{root}{n}.", f"embed_action_time.{n}.") for n in
             ("state_proj", "action_in_proj", "action_time_mlp_in", "action_time_mlp_out")]
    return renaming_converter(
        [(pali + "model.vision_tower.vision_model.", "model.vlm.vision_tower."),
         (pali + "model.multi_modal_projector.", "model.vlm.multi_modal_projector."),
         (pali + "model.language_model.", "model.vlm.language_model."), (expert + "model.", "model.dit."),
         *heads, (f"{root}action_out_proj.", "action_out_proj.")],
        {pali + "lm_head.weight": "model.vlm.language_model.embed_tokens.weight", expert + "lm_head.weight": None})


def read_pi_folder(path: Path, family: str, asset_id: str | None) -> tuple[dict, dict | None, dict, str]:
    """(policy config, openpi norm stats or None, tensor shapes, the names' root) of a LeRobot or an openpi folder.

    ``family``: ``pi0`` or ``pi05``; an openpi folder holding the other model is refused naming it.
    """
    if is_openpi_folder(path):
        shapes = tensor_names(path)
        found = openpi_family(shapes)
        if found != family:
            raise ValueError(f"{path} is an openpi {found} folder; load it as policy {found!r}")
        config, stats = read_openpi_folder(path, asset_id, family)
        return config, stats, shapes, ""
    if asset_id is not None:
        raise ValueError("asset_id is for openpi folders; this is a LeRobot folder")
    return read_policy_config(path, family), None, tensor_names(path), "model."


def pi_pipelines(path: Path, stats: dict | None, tokenizer: str | Path | None, family: str,
                 known_steps: Mapping) -> tuple[tuple[Pipeline, Pipeline], callable]:
    """((pre, post), image resize): openpi's ``{family}_libero`` transforms, else the folder's LeRobot pipelines."""
    if stats is not None:
        return openpi_pipelines(stats, tokenizer, family), resize_with_pad_pil
    pre = read_pipeline(path, "policy_preprocessor.json", tokenizer, known_steps)
    return (pre, read_pipeline(path, "policy_postprocessor.json")), resize_with_pad


def sinusoidal_time(time: torch.Tensor, width: int, min_period: float, max_period: float) -> torch.Tensor:
    """openpi's sine-cosine embedding of (B,) flow-matching times -> (B, width), computed in float64."""
    fraction = torch.linspace(0.0, 1.0, width // 2, dtype=torch.float64, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * time[:, None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).to(time.dtype)


def resize_with_pad(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> (B, 3, height, width), LeRobot 0.4.4's ``resize_with_pad_torch``."""
    cur_height, cur_width = images.shape[-2:]
    if (cur_height, cur_width) == (height, width):
        return images
    ratio = max(cur_width / width, cur_height / height)
    new_height, new_width = int(cur_height / ratio), int(cur_width / ratio)
    resized = F.interpolate(images, size=(new_height, new_width), mode="bilinear", align_corners=False)
    resized = resized.clamp(-1.0, 1.0)
    pad_top, extra_h = divmod(height - new_height, 2)
    pad_left, extra_w = divmod(width - new_width, 2)
    return F.pad(resized, (pad_left, pad_left + extra_w, pad_top, pad_top + extra_h), value=-1.0)


class Pi0Policy(Policy):
    """Args:
        model: transformers' PI0 with the folder's weights.
        config: the folder's LeRobot ``config.json``.
        preprocessor, postprocessor: the folder's pipelines.
        seed: seeds the flow-matching noise of every prediction.
        resize: (1, 3, H, W) in [0, 1] -> the model's resolution (LeRobot's or openpi's resize with padding).
    """

    action_space = LIBERO_EE_DELTA
    vlm_stack = VLM_STACK  # the VLM's decoder layers (module path): the expert reads their keys and values
    positions_after_language = 0  # prefix positions after the language tokens

    def __init__(self, model: nn.Module, config: Mapping, preprocessor: Pipeline, postprocessor: Pipeline,
                 seed: int = 0, resize=None):
        self.model = model.eval()
        self.resize = resize or resize_with_pad
        self.config = config
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.seed = int(seed)
        features = config.get("input_features", {})
        self.image_keys = [k for k, f in features.items() if f.get("type") == "VISUAL"]
        self.image_keys += [f"observation.images.empty_camera_{i}" for i in range(int(config.get("empty_cameras", 0)))]
        self.state_key = next((k for k, f in features.items() if f.get("type") == "STATE"), None)
        self.action_dim = int(config["output_features"]["action"]["shape"][0])
        if self.action_dim != self.action_space.dim:
            raise ValueError(f"the policy outputs {self.action_dim}-D actions; this backend drives "
                             f"{self.action_space.name} ({self.action_space.dim}-D)")
        self.resolution = tuple(config.get("image_resolution", (224, 224)))

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, device: str = "cpu", seed: int = 0,
                        tokenizer: str | Path | None = None, asset_id: str | None = None) -> Pi0Policy:
        from transformers import PI0Config, PI0ForConditionalGeneration

        path = Path(checkpoint).expanduser()
        config, stats, shapes, root = read_pi_folder(path, "pi0", asset_id)
        vlm = gemma_dims(shapes, f"{root}paligemma_with_expert.paligemma.model.language_model.layers")
        expert = gemma_dims(shapes, f"{root}paligemma_with_expert.gemma_expert.model.layers")
        vocab = shapes[f"{root}paligemma_with_expert.paligemma.lm_head.weight"][0]
        pi0_config = PI0Config(
            vlm_config=paligemma_config(vlm, vocab, int(config.get("image_resolution", [224])[0])),
            dit_config=expert.config(), chunk_size=int(config["chunk_size"]),
            max_state_dim=int(config["max_state_dim"]), max_action_dim=int(config["max_action_dim"]),
            num_inference_steps=int(config["num_inference_steps"]),
            min_period=float(config.get("min_period", 4e-3)), max_period=float(config.get("max_period", 4.0)),
        )
        pi0_config.vlm_config._attn_implementation = "sdpa"
        with empty_model(torch.float32):
            model = PI0ForConditionalGeneration(pi0_config)
        model.model.dit.embed_tokens = None  # the expert reads embeddings, never tokens
        load_checked(model, path, pi0_converter(root))
        (pre, post), resize = pi_pipelines(path, stats, tokenizer, "pi0", NEW_LINE_STEPS)
        return cls(model.to(device), config, pre, post, seed, resize=resize)

    def inert_layers(self) -> dict[tuple[str, int], str]:
        last = len(self.model.get_submodule(self.vlm_stack)) - 1
        return {(self.vlm_stack, last): "the action expert reads only each VLM layer's keys and values, computed "
                                        "before that layer's MLP, so the last VLM layer's MLP cannot change the "
                                        "actions"}

    # ----------------------------------------------------------- the stages
    def _camera_images(self, observation: Observation) -> dict[str, torch.Tensor]:
        images = {}
        names = list(observation.images)
        unmatched = [k for k in self.image_keys if k.removeprefix("observation.images.") not in names]
        by_order = iter(n for n in names if f"observation.images.{n}" not in self.image_keys)
        for key in self.image_keys:
            name = key.removeprefix("observation.images.")
            source = name if name in observation.images else (next(by_order, None) if key in unmatched else None)
            if source is not None and not key.startswith("observation.images.empty_camera_"):
                array = observation.images[source]
                images[key] = torch.from_numpy(np.array(array, np.float32)).permute(2, 0, 1) / 255.0
        return images

    def model_inputs(self, observation: Observation) -> dict[str, torch.Tensor]:
        """Everything the model receives: the pipeline's outputs and the prepared images."""
        batch: dict = dict(self._camera_images(observation))
        batch["task"] = observation.instruction
        if self.state_key is not None:
            batch[self.state_key] = torch.as_tensor(np.asarray(observation.state, np.float32))
        batch = self.preprocessor(batch)
        height, width = self.resolution
        present = [k for k in self.image_keys if k in batch]
        if not present:
            raise ValueError(f"none of the policy's cameras {self.image_keys} is in the observation")
        images, masks = [], []
        for key in self.image_keys:
            if key in batch:
                images.append(self.resize(batch[key].float(), height, width) * 2.0 - 1.0)
                masks.append(True)
            else:
                images.append(torch.full_like(images[0] if images else torch.zeros(1, 3, height, width), -1.0))
                masks.append(False)
        state = batch.get(self.state_key, torch.zeros(1, 0)).float()
        state_padded = F.pad(state, (0, self.model.config.max_state_dim - state.shape[-1]))
        return {"images": torch.stack(images, dim=1), "image_masks": torch.tensor([masks]),
                "lang_tokens": batch["observation.language.tokens"],
                "lang_attention_mask": batch["observation.language.attention_mask"],
                "state_normalized": state, "state_padded": state_padded}

    def instruction_positions(self, observation: Observation) -> slice:
        # the VLM's prefix ends with the language tokens (padded at the right), then any positions after them
        def language(instruction: str) -> tuple[list[int], int]:
            inputs = self.model_inputs(replace(observation, instruction=instruction))
            ids, mask = inputs["lang_tokens"][0], inputs["lang_attention_mask"][0].bool()
            real = int(mask.sum())
            if not mask[:real].all():
                raise ValueError("the language tokens are not padded at the right")
            return ids[:real].tolist(), len(ids) - real

        ids, padding = language(observation.instruction)
        return instruction_span(ids, language(PLACEHOLDER)[0], tail=padding + self.positions_after_language)

    def initial_noise(self) -> torch.Tensor:
        config = self.model.config
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn(1, config.chunk_size, config.max_action_dim, generator=generator)

    def velocity_field(self, inputs: Mapping[str, torch.Tensor]) -> VelocityField:
        """Run the prefix (images, language) once; return ``v(x, t)`` for the denoising steps."""
        model, device = self.model, next(self.model.parameters()).device
        cameras = inputs["image_masks"].shape[1]
        image_ids = torch.full((1, cameras * TOKENS_PER_IMAGE), IMAGE_TOKEN_ID, dtype=torch.long)
        image_mask = inputs["image_masks"].repeat_interleave(TOKENS_PER_IMAGE, dim=1)
        input_ids = torch.cat([image_ids, inputs["lang_tokens"]], dim=1).to(device)
        attention_mask = torch.cat([image_mask, inputs["lang_attention_mask"].bool()], dim=1).long().to(device)
        pixel_mask = inputs["image_masks"].to(device)
        embeds = model.model.embed_prefix(input_ids, inputs["images"].to(device), pixel_mask)
        cache = model.model.vlm(inputs_embeds=embeds, attention_mask=attention_mask,
                                position_ids=attention_mask.cumsum(-1) - 1,
                                token_type_ids=torch.zeros_like(embeds[:, :, 0]), use_cache=True).past_key_values
        prefix_length = cache.get_seq_length()
        state = inputs["state_padded"].to(device)

        def velocity(x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
            v = model(state=state, noise=x, timestep=time, pixel_attention_mask=pixel_mask,
                      attention_mask=attention_mask, past_key_values=cache).logits
            cache.crop(prefix_length - cache.get_seq_length())  # drop this step's own keys and values
            return v

        return velocity

    @torch.inference_mode()
    def denoise(self, inputs: Mapping[str, torch.Tensor], noise: torch.Tensor,
                num_steps: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Flow matching from ``noise``: (final x (1, chunk, max_action_dim), the velocity of every step).

        Euler steps ``x <- x + dt v(x, t)`` from ``t = 1`` with ``dt = -1 / num_steps``.
        """
        device = next(self.model.parameters()).device
        num_steps = num_steps or self.model.config.num_inference_steps
        velocity = self.velocity_field(inputs)
        x, dt, velocities = noise.to(device), -1.0 / num_steps, []
        for step in range(num_steps):
            velocities.append(velocity(x, torch.full((1,), 1.0 + step * dt, dtype=torch.float32, device=device)))
            x = x + dt * velocities[-1]
        return x, velocities

    def unnormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        """(1, chunk, action_dim) model actions -> dataset units, by the postprocessor."""
        return self.postprocessor({"action": normalized})["action"]

    def predict(self, observation: Observation) -> np.ndarray:
        final, _ = self.denoise(self.model_inputs(observation), self.initial_noise())
        actions = self.unnormalize(final[:, :, : self.action_dim].float())[0]
        steps = int(self.config.get("n_action_steps", len(actions)))
        return actions[:steps].cpu().numpy()
