"""SmolVLA from a LeRobot (>= 0.4) policy folder, native, on transformers' SmolVLM and Llama blocks.

The folder: ``config.json`` (type ``smolvla``), ``model.safetensors`` with LeRobot's names
(``model.vlm_with_expert.vlm.model.{vision_model,connector,text_model}``,
``model.vlm_with_expert.lm_expert``, ``model.state_proj``, ...) and the processor pipelines.
The SmolVLM2 backbone's own config (and its tokenizer) is named by hub id in ``config.json``
(``vlm_model_name``): it is read from a local folder (``vlm``) or from the local Hugging Face
cache by that name, never downloaded. As LeRobot computes it:

* **Layer skipping**: only the first ``num_vlm_layers`` text layers are built (and published).
* **Prefix**: per camera, the SigLIP-style vision tower and the pixel-shuffle connector, scaled
  by ``sqrt(width)`` (optionally between the image special tokens); the language tokens,
  scaled by ``sqrt(width)``; one state token (``state_proj``). Images and language attend to
  each other; the state token attends to all, nothing attends to it. RoPE with wavelength
  10 000 at positions that count valid tokens only.
* **Action expert**: a narrower Llama (``expert_width_multiplier``) whose layers pair with VLM
  layers. Every ``self_attn_every_n_layers``-th layer self-attends over the prefix's cached
  keys/values and the (causal) action tokens; the others cross-attend: their ``k_proj`` /
  ``v_proj`` map the VLM layer's cached keys and values, the queries sit at positions 0..49.
  Action tokens are ``action_time_mlp_out(silu(action_time_mlp_in([action_in_proj(x), time])))``.
* **Flow matching**: Euler from ``t = 1`` with ``dt = -1/num_steps``, seeded noise.
* **Images**: ``[0, 1]``, resized to ``resize_imgs_with_padding`` keeping the aspect ratio,
  padded at the left and top with 0, then ``2x - 1``. The vision tower's patch positions are
  the intended ``0 .. n-1`` per axis (transformers 4.55.1 - 4.57 shift them by one for
  float32 pixels; LeRobot 0.4.4 under those versions inherits the shift).

The action expert reads each VLM layer's keys and values, computed before that layer's MLP:
the last VLM layer's MLP cannot change the actions, and concepts on it are refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vla_steering.policies.checkpoint import (
    CheckpointError,
    Converter,
    empty_model,
    load_checked,
    renaming_converter,
    tensor_names,
)
from vla_steering.policies.lerobot_processing import NEW_LINE_STEPS, local_folder, read_pipeline, read_policy_config
from vla_steering.policies.pi0 import FlowConfig, Pi0Policy, VelocityField, sinusoidal_time

VLM_STACK = "vlm.text_model.layers"
EXPERT_STACK = "expert.layers"
ROPE_WAVELENGTH = 10_000
PUBLISHED = "model.vlm_with_expert."


@dataclass(frozen=True)
class SmolVLAConfig(FlowConfig):
    """What a SmolVLA prediction needs beyond the modules: the flow sizes, the attention and layer pattern."""

    heads: int
    kv_heads: int
    head_dim: int
    cross_layers: frozenset[int]  # VLM layer indices at which the expert cross-attends
    expert_of_layer: tuple[int | None, ...]  # VLM layer -> the expert layer paired with it (None: none)
    image_special_tokens: tuple[int, int, int] | None  # (fake image, global image, image end) token ids


def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """LeRobot's SmolVLA RoPE: (B, H, L, D) rotated by (B, L) positions, halves as (x1, x2), in float32."""
    half = x.shape[-1] // 2
    exponents = (2.0 / x.shape[-1]) * torch.arange(half, dtype=torch.float32, device=x.device)
    radians = positions[:, None, :, None].float() / (ROPE_WAVELENGTH ** exponents)
    sin, cos = torch.sin(radians), torch.cos(radians)
    x1, x2 = x.float().split(half, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, L, H * D) -> (B, H, L, D)."""
    return x.view(*x.shape[:2], -1, head_dim).transpose(1, 2)


def _attend(layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention with a (B, Lq, Lk) boolean mask, through the layer's ``o_proj``."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=q.shape[-1] ** -0.5)
    return layer.self_attn.o_proj(out.transpose(1, 2).flatten(2))


def _mlp_block(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + layer.mlp(layer.post_attention_layernorm(x))


class SmolVLAModel(nn.Module):
    """SmolVLM (vision, connector, the kept text layers) + the action expert + SmolVLA's projections."""

    def __init__(self, backbone, expert_width: int, expert_mlp: int, config: SmolVLAConfig):
        import copy

        from transformers import AutoModel
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

        super().__init__()
        self.config = config
        self.vlm = AutoModel.from_config(backbone)
        text = backbone.text_config
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        expert_config = copy.deepcopy(text)
        expert_config.hidden_size, expert_config.intermediate_size = expert_width, expert_mlp
        expert_layers = sum(expert is not None for expert in config.expert_of_layer)
        cross_layers = {config.expert_of_layer[i] for i in config.cross_layers}
        expert_config.num_hidden_layers = expert_layers
        self.expert = nn.Module()
        self.expert.layers = nn.ModuleList(LlamaDecoderLayer(expert_config, i) for i in range(expert_layers))
        self.expert.norm = LlamaRMSNorm(expert_width, eps=text.rms_norm_eps)
        vlm_kv = text.num_key_value_heads * text.head_dim
        for index, layer in enumerate(self.expert.layers):
            if index in cross_layers:  # keys and values come from the VLM's
                layer.self_attn.k_proj = nn.Linear(vlm_kv, vlm_kv, bias=text.attention_bias)
                layer.self_attn.v_proj = nn.Linear(vlm_kv, vlm_kv, bias=text.attention_bias)
        self.state_proj = nn.Linear(config.max_state_dim, text.hidden_size)
        self.action_in_proj = nn.Linear(config.max_action_dim, expert_width)
        self.action_out_proj = nn.Linear(expert_width, config.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * expert_width, expert_width)
        self.action_time_mlp_out = nn.Linear(expert_width, expert_width)

    def get_output_embeddings(self) -> nn.Linear:
        """The VLM's LM head: value vectors of either stack are read through it."""
        return self.lm_head

    # -------------------------------------------------------------- prefix
    def embed_prefix(self, images: torch.Tensor, image_masks: torch.Tensor, tokens: torch.Tensor,
                     token_mask: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings (1, P, D), valid (1, P), blocks (1, P): 0 for images and text, 1 for the state)."""
        vlm, embed = self.vlm, self.vlm.text_model.get_input_embeddings()
        width = embed.embedding_dim
        parts, valid = [], []
        special = self.config.image_special_tokens
        for camera in range(images.shape[1]):
            if special is not None:
                parts.append(embed(torch.tensor([special[:2]], device=tokens.device)))
                valid.append(torch.ones(1, 2, dtype=torch.bool, device=tokens.device))
            features = vlm.connector(vlm.vision_model(pixel_values=images[:, camera]).last_hidden_state)
            parts.append(features * torch.tensor(width ** 0.5, dtype=features.dtype))
            valid.append(image_masks[:, camera : camera + 1].expand(-1, features.shape[1]))
            if special is not None:
                parts.append(embed(torch.tensor([special[2:]], device=tokens.device)))
                valid.append(torch.ones(1, 1, dtype=torch.bool, device=tokens.device))
        parts += [embed(tokens) * math.sqrt(width), self.state_proj(state)[:, None, :]]
        valid += [token_mask.bool(), torch.ones(1, 1, dtype=torch.bool, device=tokens.device)]
        embeds, valid = torch.cat(parts, dim=1), torch.cat(valid, dim=1)
        blocks = torch.zeros_like(valid, dtype=torch.long)
        blocks[:, -1] = 1
        return embeds, valid, blocks

    def prefix_cache(self, embeds: torch.Tensor, valid: torch.Tensor,
                     blocks: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run the kept VLM layers over the prefix; each layer's (rotated keys, values)."""
        head_dim = self.config.head_dim
        mask = (blocks[:, None, :] <= blocks[:, :, None]) & valid[:, None, :] & valid[:, :, None]
        positions = valid.long().cumsum(-1) - 1
        x, cache = embeds, []
        for layer in self.vlm.text_model.layers:
            h = layer.input_layernorm(x)
            attn = layer.self_attn
            q = rope(_heads(attn.q_proj(h), head_dim), positions)
            k = rope(_heads(attn.k_proj(h), head_dim), positions)
            v = _heads(attn.v_proj(h), head_dim)
            cache.append((k, v))
            x = _mlp_block(layer, x + _attend(layer, q, k, v, mask))
        return cache

    # ----------------------------------------------------------- denoising
    def action_tokens(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        time_emb = sinusoidal_time(time, self.action_in_proj.out_features, self.config.min_period,
                                   self.config.max_period).to(x.dtype)
        actions = self.action_in_proj(x)
        fused = torch.cat([actions, time_emb[:, None, :].expand_as(actions)], dim=2)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused)))

    def velocity(self, x: torch.Tensor, time: torch.Tensor, cache: list, valid: torch.Tensor) -> torch.Tensor:
        """v(x, t) from the prefix's per-layer keys and values and its (1, P) validity."""
        config, head_dim = self.config, self.config.head_dim
        h = self.action_tokens(x, time)
        length = h.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()[None]
        prefix_rows = valid[:, None, :].expand(-1, length, -1)
        self_mask = torch.cat([prefix_rows, causal.expand(valid.shape[0], -1, -1)], dim=-1)
        own = torch.arange(length, device=x.device)[None]
        self_positions = valid.sum(-1, keepdim=True) + own
        for index, (keys, values) in enumerate(cache):
            expert = config.expert_of_layer[index]
            if expert is None:
                continue
            layer = self.expert.layers[expert]
            attn = layer.self_attn
            normed = layer.input_layernorm(h)
            if index in config.cross_layers:
                q = rope(_heads(attn.q_proj(normed), head_dim), own)
                k = _heads(attn.k_proj(keys.transpose(1, 2).flatten(2)), head_dim)
                v = _heads(attn.v_proj(values.transpose(1, 2).flatten(2)), head_dim)
                out = _attend(layer, q, k, v, prefix_rows)
            else:
                q = rope(_heads(attn.q_proj(normed), head_dim), self_positions)
                k = torch.cat([keys, rope(_heads(attn.k_proj(normed), head_dim), self_positions)], dim=2)
                v = torch.cat([values, _heads(attn.v_proj(normed), head_dim)], dim=2)
                out = _attend(layer, q, k, v, self_mask)
            h = _mlp_block(layer, h + out)
        return self.action_out_proj(self.expert.norm(h)[:, -config.chunk_size:].float())


def smolvla_converter() -> Converter:
    """LeRobot's SmolVLA names -> :class:`SmolVLAModel`'s."""
    heads = [(f"model.{n}.", f"{n}.") for n in ("state_proj", "action_in_proj", "action_out_proj",
                                               "action_time_mlp_in", "action_time_mlp_out")]
    return renaming_converter([(PUBLISHED + "vlm.model.", "vlm."), (PUBLISHED + "vlm.lm_head.", "lm_head."),
                               (PUBLISHED + "lm_expert.", "expert."), *heads])


def resize_with_pad_left_top(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, height, width): SmolVLA's resize, padded at the left and top with 0."""
    cur_height, cur_width = images.shape[-2:]
    ratio = max(cur_width / width, cur_height / height)
    new_height, new_width = int(cur_height / ratio), int(cur_width / ratio)
    resized = F.interpolate(images, size=(new_height, new_width), mode="bilinear", align_corners=False)
    return F.pad(resized, (max(0, width - new_width), 0, max(0, height - new_height), 0), value=0.0)


def smolvla_sizes(config: Mapping, text, expert_layers: int,
                  special: tuple[int, int, int] | None = None) -> SmolVLAConfig:
    """The prediction's sizes and the expert's layer pattern, from ``config.json`` and the (kept) text config."""
    kept = text.num_hidden_layers
    if expert_layers == 0 or kept % expert_layers:
        raise CheckpointError(f"{expert_layers} expert layers cannot pair with the {kept} kept VLM layers")
    every = int(config.get("self_attn_every_n_layers", -1))
    crossing = "cross" in config.get("attention_mode", "self_attn")
    step = kept // expert_layers
    return SmolVLAConfig(
        **FlowConfig.fields_of(config, "num_steps"), heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads, head_dim=text.head_dim,
        cross_layers=frozenset(i for i in range(kept) if crossing and not (every > 0 and i % every == 0)),
        expert_of_layer=tuple(i // step if i % step == 0 else None for i in range(kept)),
        image_special_tokens=special)


def _layer_count(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    return len({name[len(prefix):].split(".", 1)[0] for name in shapes if name.startswith(prefix)})


class SmolVLAPolicy(Pi0Policy):
    """SmolVLA: pi0's camera, pipeline and noise handling (:class:`Pi0Policy`), its own model and resize."""

    vlm_stack = VLM_STACK
    positions_after_language = 1  # the state token

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, device: str = "cpu", seed: int = 0,
                        vlm: str | Path | None = None) -> SmolVLAPolicy:
        from transformers import AutoConfig, AutoTokenizer

        path = Path(checkpoint).expanduser()
        config = read_policy_config(path, "smolvla")
        backbone_folder = local_folder(config["vlm_model_name"], vlm, "SmolVLA's VLM backbone",
                                       "vlm (a folder with the SmolVLM config.json and tokenizer)")
        backbone = AutoConfig.from_pretrained(str(backbone_folder), local_files_only=True)
        if backbone.model_type != "smolvlm":
            raise CheckpointError(f"{backbone_folder} holds a {backbone.model_type!r} config, not SmolVLM's")
        shapes = tensor_names(path)
        kept = _layer_count(shapes, PUBLISHED + "vlm.model.text_model.layers.")
        wanted = int(config.get("num_vlm_layers", -1))
        if wanted > 0 and kept != wanted:
            raise CheckpointError(f"{path}: config.json keeps {wanted} VLM layers, the weights hold {kept}")
        backbone.text_config.num_hidden_layers = kept
        text = backbone.text_config
        expert_layers = _layer_count(shapes, PUBLISHED + "lm_expert.layers.")
        special = None
        if config.get("add_image_special_tokens", False):
            tokenizer = AutoTokenizer.from_pretrained(str(backbone_folder), local_files_only=True)
            fake, global_image = (tokenizer.convert_tokens_to_ids(t) for t in ("<fake_token_around_image>",
                                                                               "<global-img>"))
            special = (fake, global_image, fake)
        sizes = smolvla_sizes(config, text, expert_layers, special)
        first = PUBLISHED + "lm_expert.layers.0."
        expert_width = shapes[first + "input_layernorm.weight"][0]
        expert_mlp = shapes[first + "mlp.gate_proj.weight"][0]
        with empty_model(torch.float32):
            model = SmolVLAModel(backbone, expert_width, expert_mlp, sizes)
        load_checked(model, path, smolvla_converter())
        pre = read_pipeline(path, "policy_preprocessor.json", backbone_folder, NEW_LINE_STEPS)
        post = read_pipeline(path, "policy_postprocessor.json")
        policy = cls(model.to(device), config, pre, post, seed, resize=resize_with_pad_left_top)
        resolution = config.get("resize_imgs_with_padding")
        if resolution:
            policy.resolution = tuple(resolution)
        else:  # LeRobot would pass the camera's own size; the model's input is the feature's declared size
            policy.resolution = tuple(config["input_features"][policy.image_keys[0]]["shape"][1:])
        return policy

    def velocity_field(self, inputs: Mapping[str, torch.Tensor]) -> VelocityField:
        """Run the SmolVLM prefix (images, language, state) once; return ``v(x, t)`` over its keys and values."""
        model, device = self.model, next(self.model.parameters()).device
        embeds, valid, blocks = model.embed_prefix(*(inputs[k].to(device) for k in (
            "images", "image_masks", "lang_tokens", "lang_attention_mask", "state_padded")))
        cache = model.prefix_cache(embeds, valid, blocks)
        return lambda x, time: model.velocity(x, time, cache, valid)
