"""OpenVLA's Prismatic architecture, composed from transformers' modules.

What the published (HF-converted) OpenVLA checkpoints hold, and what this builds:

* a fused vision backbone: DINOv2 ViT-L/14 with 4 registers (timm
  ``vit_large_patch14_reg4_dinov2.lvd142m``) as ``Dinov2WithRegistersModel`` and
  SigLIP SO400M/14 (``vit_so400m_patch14_siglip_224``) as ``SiglipVisionModel``; each
  tower's features are its **second-to-last** block's output (no final norm), patch
  tokens only, concatenated per patch (1024 + 1152 = 2176);
* the ``fused-gelu-mlp`` projector ``fc1 -> GELU -> fc2 -> GELU -> fc3``;
* Llama-2 (``LlamaForCausalLM``), which sees ``[BOS] + projected patches + the rest of
  the prompt`` under plain causal attention.

timm's tensors are renamed to transformers' (fused ``qkv`` split into q/k/v, LayerScale
``lsN.scale_factor`` -> ``layer_scaleN.lambda1``, SigLIP's attention-pool head mapped
onto ``SiglipMultiheadAttentionPoolingHead``). timm's DINOv2 adds position embeddings
to the patches only; transformers' adds one to the class token too, so that entry is
set to zero (``featurizer.embeddings.position_embeddings``' first row), which makes the
two identical. DINOv2's mask token (pre-training only) is not published and stays zero.
The towers' last blocks, final norms and SigLIP's pooling head are loaded and checked
but never run: the features are taken before them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from vla_steering.policies.checkpoint import Converter

# timm model id -> the transformers config of that tower (exact GELU: timm's default act_layer)
DINOV2_REG4_L14 = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4,
                   "patch_size": 14, "num_register_tokens": 4, "layer_norm_eps": 1e-6, "hidden_act": "gelu",
                   "layerscale_value": 1.0, "qkv_bias": True}
SIGLIP_SO400M_14 = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                    "num_attention_heads": 16, "patch_size": 14, "layer_norm_eps": 1e-6, "hidden_act": "gelu",
                    "vision_use_head": True}
TIMM_TOWERS = {
    "vit_large_patch14_reg4_dinov2.lvd142m": ("dinov2", DINOV2_REG4_L14),
    "vit_so400m_patch14_siglip_224": ("siglip", SIGLIP_SO400M_14),
}
NOT_STORED = ("vision_backbone.featurizer.embeddings.mask_token",)


@dataclass(frozen=True)
class PrismaticConfig:
    """What the folder's ``config.json`` says about the architecture."""

    towers: tuple[str, ...]  # timm ids, featurizer first
    image_size: int
    projector: str  # arch_specifier
    text_config: Mapping

    @classmethod
    def from_openvla_config(cls, config: Mapping) -> PrismaticConfig:
        towers = tuple(config.get("timm_model_ids", ()))
        unknown = [t for t in towers if t not in TIMM_TOWERS]
        if not towers or unknown:
            raise ValueError(f"vision towers {list(towers)} are not supported; this backend builds "
                             f"{sorted(TIMM_TOWERS)}")
        if bool(config.get("use_fused_vision_backbone", len(towers) > 1)) != (len(towers) == 2):
            raise ValueError("use_fused_vision_backbone disagrees with the number of timm_model_ids")
        if any(config.get("timm_override_act_layers") or []):
            raise ValueError(f"timm_override_act_layers {config['timm_override_act_layers']} is not supported")
        projector = config.get("arch_specifier", "")
        expected_projector = "fused-gelu-mlp" if len(towers) == 2 else "gelu-mlp"
        if not projector.endswith(expected_projector):
            raise ValueError(f"projector {projector!r} is not supported (expected *{expected_projector})")
        sizes = set(config.get("image_sizes", [224]))
        if len(sizes) != 1:
            raise ValueError(f"towers with different image sizes {sorted(sizes)} are not supported")
        return cls(towers, sizes.pop(), projector, dict(config.get("text_config", {})))


def _tower(timm_id: str, image_size: int) -> nn.Module:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel, SiglipVisionConfig, SiglipVisionModel

    kind, fields = TIMM_TOWERS[timm_id]
    if kind == "dinov2":
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(image_size=image_size, **fields,
                                                                  attn_implementation="sdpa"))
    return SiglipVisionModel(SiglipVisionConfig(image_size=image_size, **fields, attn_implementation="sdpa"))


def _penultimate_patches(tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The second-to-last block's output, patch tokens only: (B, patches, D)."""
    if hasattr(tower, "encoder") and hasattr(tower.encoder, "layer"):  # DINOv2 with registers
        hidden = tower.embeddings(pixel_values.to(tower.embeddings.cls_token.dtype))
        for block in tower.encoder.layer[:-1]:
            hidden = block(hidden, None)
        return hidden[:, 1 + tower.config.num_register_tokens:]
    hidden = tower.embeddings(pixel_values)  # SigLIP: no class token
    for block in tower.encoder.layers[:-1]:
        hidden = block(hidden, None)
    return hidden


class PrismaticVisionBackbone(nn.Module):
    """One or two towers; ``pixel_values`` (B, 3 per tower, H, W) -> (B, patches, sum of widths)."""

    def __init__(self, config: PrismaticConfig):
        super().__init__()
        self.featurizer = _tower(config.towers[0], config.image_size)
        self.fused_featurizer = _tower(config.towers[1], config.image_size) if len(config.towers) == 2 else None
        self.embed_dim = sum(t.config.hidden_size for t in (self.featurizer, self.fused_featurizer) if t is not None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.fused_featurizer is None:
            return _penultimate_patches(self.featurizer, pixel_values)
        first, second = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([_penultimate_patches(self.featurizer, first),
                          _penultimate_patches(self.fused_featurizer, second)], dim=2)


class PrismaticProjector(nn.Module):
    """``fused-gelu-mlp``: fc1 -> GELU -> fc2 -> GELU -> fc3 (``gelu-mlp``: fc1 -> GELU -> fc2)."""

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool):
        super().__init__()
        hidden = 4 * vision_dim if fused else llm_dim
        self.fc1 = nn.Linear(vision_dim, hidden)
        self.fc2 = nn.Linear(hidden, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim) if fused else None
        self.act = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(features)))
        return self.fc3(self.act(x)) if self.fc3 is not None else x


class PrismaticVLA(nn.Module):
    """The model a steering engine attaches to: one forward = one LLM call (prefill or decode step).

    ``forward(input_ids, pixel_values, past_key_values)``: with ``pixel_values`` it is the
    prefill (the image always enters it), else one cached decode step. Returns the
    last position's logits (B, V) and the cache.
    """

    def __init__(self, config: PrismaticConfig):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.config = config
        self.vision_backbone = PrismaticVisionBackbone(config)
        text = {k: v for k, v in config.text_config.items() if k not in ("model_type", "torch_dtype", "dtype")}
        self.language_model = LlamaForCausalLM(LlamaConfig(**text, attn_implementation="sdpa"))
        llm_dim = self.language_model.config.hidden_size
        self.projector = PrismaticProjector(self.vision_backbone.embed_dim, llm_dim, len(config.towers) == 2)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.lm_head

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, past_key_values=None):
        embeddings = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            patches = self.projector(self.vision_backbone(pixel_values.to(embeddings.dtype)))
            embeddings = torch.cat([embeddings[:, :1], patches.to(embeddings.dtype), embeddings[:, 1:]], dim=1)
        out = self.language_model(inputs_embeds=embeddings, past_key_values=past_key_values, use_cache=True,
                                  logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values


def _split_qkv(prefix: str, tensor: torch.Tensor, names: tuple[str, str, str]) -> dict[str, torch.Tensor]:
    q, k, v = torch.chunk(tensor, 3, dim=0)
    return {f"{prefix}.{n}": t for n, t in zip(names, (q, k, v))}


def _dinov2_key(rest: str, tensor: torch.Tensor, out: str) -> dict[str, torch.Tensor] | None:
    if rest == "cls_token":
        return {f"{out}.embeddings.cls_token": tensor}
    if rest == "reg_token":
        return {f"{out}.embeddings.register_tokens": tensor}
    if rest == "pos_embed":  # timm adds it to the patches only: give the class token a zero entry
        zero = torch.zeros_like(tensor[:, :1])
        return {f"{out}.embeddings.position_embeddings": torch.cat([zero, tensor], dim=1)}
    if rest.startswith("patch_embed.proj."):
        return {f"{out}.embeddings.patch_embeddings.projection.{rest.rsplit('.', 1)[1]}": tensor}
    if rest.startswith("norm."):
        return {f"{out}.layernorm.{rest.rsplit('.', 1)[1]}": tensor}
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
    if not match:
        return None
    block, part = f"{out}.encoder.layer.{match[1]}", match[2]
    kind = part.rsplit(".", 1)[1]
    if part.startswith("attn.qkv."):
        return _split_qkv(f"{block}.attention", tensor, (f"q_proj.{kind}", f"k_proj.{kind}", f"v_proj.{kind}"))
    renames = {"attn.proj": "attention.o_proj", "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1",
               "mlp.fc2": "mlp.fc2"}
    module = part.rsplit(".", 1)[0]
    if module in renames:
        return {f"{block}.{renames[module]}.{kind}": tensor}
    if part in ("ls1.scale_factor", "ls2.scale_factor"):
        return {f"{block}.layer_scale{part[2]}.lambda1": tensor}
    return None


def _siglip_key(rest: str, tensor: torch.Tensor, out: str) -> dict[str, torch.Tensor] | None:
    if rest == "pos_embed":
        return {f"{out}.embeddings.position_embedding.weight": tensor[0]}
    if rest.startswith("patch_embed.proj."):
        return {f"{out}.embeddings.patch_embedding.{rest.rsplit('.', 1)[1]}": tensor}
    if rest.startswith("norm."):
        return {f"{out}.post_layernorm.{rest.rsplit('.', 1)[1]}": tensor}
    if rest == "attn_pool.latent":
        return {f"{out}.head.probe": tensor}
    pool = {"attn_pool.proj": "head.attention.out_proj", "attn_pool.norm": "head.layernorm",
            "attn_pool.mlp.fc1": "head.mlp.fc1", "attn_pool.mlp.fc2": "head.mlp.fc2"}
    module, kind = rest.rsplit(".", 1)
    if module in pool:
        return {f"{out}.{pool[module]}.{kind}": tensor}
    if module in ("attn_pool.q", "attn_pool.kv"):  # MultiheadAttention packs q, k, v as one in_proj
        return {f"{out}.head.attention.in_proj_{kind}.{module.rsplit('.', 1)[1]}": tensor}
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if not match:
        return None
    block, part = f"{out}.encoder.layers.{match[1]}", match[2]
    if part == "attn.qkv":
        return _split_qkv(f"{block}.self_attn", tensor, (f"q_proj.{kind}", f"k_proj.{kind}", f"v_proj.{kind}"))
    renames = {"attn.proj": "self_attn.out_proj", "norm1": "layer_norm1", "norm2": "layer_norm2",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    return {f"{block}.{renames[part]}.{kind}": tensor} if part in renames else None


def prismatic_converter(model: PrismaticVLA) -> Converter:
    """Published HF-converted Prismatic names -> :class:`PrismaticVLA` parameters."""
    towers = {"featurizer": model.config.towers[0]}
    if len(model.config.towers) == 2:
        towers["fused_featurizer"] = model.config.towers[1]
    pending_in_proj: dict[str, dict[str, torch.Tensor]] = {}

    def convert(name: str, tensor: torch.Tensor) -> Mapping[str, torch.Tensor] | None:
        if name.startswith(("language_model.", "projector.")):
            return {name: tensor}
        match = re.fullmatch(r"vision_backbone\.(featurizer|fused_featurizer)\.(.+)", name)
        if not match or match[1] not in towers:
            return None
        out = f"vision_backbone.{match[1]}"
        kind = TIMM_TOWERS[towers[match[1]]][0]
        converted = (_dinov2_key if kind == "dinov2" else _siglip_key)(match[2], tensor, out)
        if converted is None:
            return None
        result = {}
        for target, value in converted.items():
            if ".head.attention.in_proj_" not in target:
                result[target] = value
                continue
            packed, part = target.rsplit(".", 1)  # ...in_proj_weight + q | kv; both needed to fill it
            pending = pending_in_proj.setdefault(packed, {})
            pending[part] = value
            if len(pending) == 2:
                result[packed] = torch.cat([pending.pop("q"), pending.pop("kv")], dim=0)
        return result

    return convert
