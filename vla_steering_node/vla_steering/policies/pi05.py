"""pi0.5 from a LeRobot (>= 0.4) policy folder, native, on transformers' PaliGemma and Gemma blocks.

What sets pi0.5 apart from pi0 (:mod:`vla_steering.policies.pi0`, whose loading, image
preparation and noise this backend shares):

* **adaRMS action expert.** The expert's norms carry no gain: the flow-matching time goes
  through a sinusoidal embedding and ``time_mlp_in -> silu -> time_mlp_out -> silu`` into a
  condition ``c``; each norm's ``dense`` turns ``c`` into (scale, shift, gate), the norm
  computes ``rms(x) * (1 + scale) + shift`` and the residual adds ``gate * sublayer``.
  The final norm is adaptive too. The expert's inputs are the projected noisy actions only
  (no state token, no time concatenation as in pi0), attending bidirectionally to each
  other and to the valid prefix tokens, at positions after the prefix.
* **The state lives in the prompt.** The preprocessor's ``pi05_prepare_state_tokenizer``
  step pads the normalised state to 32, digitises it into 256 bins over [-1, 1] and writes
  ``Task: {task}, State: {bins};\\nAction: ``; the state enters the model nowhere else.
* **Quantile normalisation** where the folder's statistics say so (LeRobot's default for pi0.5).

The folder: a LeRobot one (``config.json`` of type ``pi05``, ``model.safetensors`` with LeRobot's
names, the processor pipelines and their statistics), or openpi's own PyTorch conversion (the
same tensors without the leading ``model.``, with openpi's ``pi05_libero`` transforms:
:mod:`vla_steering.policies.openpi_processing`). Every tensor is checked; the token embedding is
tied to ``paligemma.lm_head.weight`` and the expert's published ``lm_head`` is unused.
Gemma dimensions come from the tensors' shapes, so the ``gemma_2b`` / ``gemma_300m`` names
need no table.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GemmaConfig, PaliGemmaConfig
from transformers.models.gemma.modeling_gemma import GemmaMLP, GemmaRotaryEmbedding, apply_rotary_pos_emb

from vla_steering.policies.checkpoint import Converter, empty_model, load_checked, renaming_converter
from vla_steering.policies.lerobot_processing import Batch, Step
from vla_steering.policies.pi0 import (
    TOKENS_PER_IMAGE,
    FlowConfig,
    GemmaDims,
    Pi0Policy,
    VelocityField,
    gemma_dims,
    paligemma_config,
    pi_pipelines,
    read_pi_folder,
    sinusoidal_time,
)

VLM_STACK = "vlm.language_model.layers"
EXPERT_STACK = "expert.layers"
STATE_BINS = 256


class AdaptiveRMSNorm(nn.Module):
    """openpi's adaRMS: ``rms(x) * (1 + scale) + shift`` and a residual gate, all from the condition."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(width, 3 * width)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        scale, shift, gate = self.dense(cond)[:, None, :].chunk(3, dim=-1)
        return (normed * (1.0 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


class AdaptiveGemmaLayer(nn.Module):
    """A Gemma decoder layer with adaRMS norms and gated residuals, reading the prefix's keys and values."""

    def __init__(self, dims: GemmaDims):
        super().__init__()
        self.heads, self.head_dim = dims.heads, dims.head_dim
        self.input_layernorm = AdaptiveRMSNorm(dims.width)
        self.post_attention_layernorm = AdaptiveRMSNorm(dims.width)
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(dims.width, dims.heads * dims.head_dim, bias=False)
        self.self_attn.k_proj = nn.Linear(dims.width, dims.head_dim, bias=False)  # one KV head
        self.self_attn.v_proj = nn.Linear(dims.width, dims.head_dim, bias=False)
        self.self_attn.o_proj = nn.Linear(dims.heads * dims.head_dim, dims.width, bias=False)
        self.mlp = GemmaMLP(GemmaConfig(hidden_size=dims.width, intermediate_size=dims.mlp,
                                        hidden_act="gelu_pytorch_tanh"))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                prefix_kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        attn = self.self_attn
        batch, length, _ = x.shape
        h, gate = self.input_layernorm(x, cond)
        q = attn.q_proj(h).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(batch, length, 1, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(batch, length, 1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *rope)
        k = torch.cat([prefix_kv[0], k], dim=2).expand(-1, self.heads, -1, -1)
        v = torch.cat([prefix_kv[1], v], dim=2).expand(-1, self.heads, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1)) * gate
        h, gate = self.post_attention_layernorm(x, cond)
        return x + self.mlp(h) * gate


class AdaptiveGemmaExpert(nn.Module):
    """pi0.5's action expert: adaRMS Gemma layers over the noisy actions, a final adaptive norm."""

    def __init__(self, dims: GemmaDims):
        super().__init__()
        self.layers = nn.ModuleList(AdaptiveGemmaLayer(dims) for _ in range(dims.depth))
        self.norm = AdaptiveRMSNorm(dims.width)
        self.rotary_emb = GemmaRotaryEmbedding(GemmaConfig(hidden_size=dims.width, head_dim=dims.head_dim,
                                                           num_attention_heads=dims.heads))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, position_ids: torch.Tensor,
                prefix_kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> torch.Tensor:
        rope = self.rotary_emb(x, position_ids)
        for layer, kv in zip(self.layers, prefix_kv, strict=True):
            x = layer(x, cond, rope, kv, mask)
        return self.norm(x, cond)[0]


class Pi05Model(nn.Module):
    """PaliGemma (prefix) + the adaRMS expert (denoising) + pi0.5's action and time projections."""

    def __init__(self, vlm_config: dict, expert: GemmaDims, config: FlowConfig):
        super().__init__()
        self.config = config
        paligemma = PaliGemmaConfig(**{k: v for k, v in vlm_config.items() if k != "model_type"})
        paligemma._attn_implementation = "sdpa"
        self.vlm = AutoModel.from_config(paligemma)
        self.expert = AdaptiveGemmaExpert(expert)
        self.action_in_proj = nn.Linear(config.max_action_dim, expert.width)
        self.time_mlp_in = nn.Linear(expert.width, expert.width)
        self.time_mlp_out = nn.Linear(expert.width, expert.width)
        self.action_out_proj = nn.Linear(expert.width, config.max_action_dim)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding, tied to PaliGemma's LM head: value vectors are read through it."""
        return self.vlm.get_input_embeddings()

    def time_condition(self, time: torch.Tensor) -> torch.Tensor:
        """(B,) flow-matching times -> the adaRMS condition (B, width), as openpi computes it."""
        embedding = sinusoidal_time(time, self.action_in_proj.out_features, self.config.min_period,
                                    self.config.max_period)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(embedding))))

    def velocity(self, x: torch.Tensor, time: torch.Tensor, prefix_kv: list, prefix_mask: torch.Tensor) -> torch.Tensor:
        """v(x, t) given the prefix's per-layer keys and values and its (B, P) validity mask."""
        batch, length = x.shape[:2]
        mask = torch.cat([prefix_mask[:, None, None, :].expand(-1, 1, length, -1),
                          torch.ones(batch, 1, length, length, dtype=torch.bool, device=x.device)], dim=-1)
        position_ids = prefix_mask.sum(-1, keepdim=True) + torch.arange(length, device=x.device)[None]
        out = self.expert(self.action_in_proj(x), self.time_condition(time), position_ids, prefix_kv, mask)
        return self.action_out_proj(out.float())


def pi05_converter(root: str) -> Converter:
    """Published pi0.5 names (``root`` = ``"model."`` for LeRobot, ``""`` for openpi) -> :class:`Pi05Model`'s."""
    pali, expert = f"{root}paligemma_with_expert.paligemma.", f"{root}paligemma_with_expert.gemma_expert."
    heads = [(f"{root}{n}.", f"{n}.") for n in ("action_in_proj", "time_mlp_in", "time_mlp_out", "action_out_proj")]
    return renaming_converter(
        [(pali + "model.vision_tower.vision_model.", "vlm.vision_tower."),
         (pali + "model.multi_modal_projector.", "vlm.multi_modal_projector."),
         (pali + "model.language_model.", "vlm.language_model."), (expert + "model.", "expert."), *heads],
        {pali + "lm_head.weight": "vlm.language_model.embed_tokens.weight", expert + "lm_head.weight": None})


def _state_prompt(config: Mapping) -> Step:
    """LeRobot's ``pi05_prepare_state_tokenizer_processor_step``: the normalised state as bins in the prompt."""
    max_state_dim = int(config.get("max_state_dim", 32))
    task_key = config.get("task_key", "task")
    edges = np.linspace(-1, 1, STATE_BINS + 1)[:-1]

    def prompt(batch: Batch) -> Batch:
        state, tasks = batch.get("observation.state"), batch.get(task_key)
        if state is None or tasks is None:
            raise ValueError("pi0.5's prompt needs the robot state and the task")
        padded = F.pad(state.float(), (0, max_state_dim - state.shape[-1])).cpu().numpy()
        bins = np.digitize(padded, bins=edges) - 1
        prompts = [f"Task: {task.strip().replace('_', ' ').replace(chr(10), ' ')}, "
                   f"State: {' '.join(map(str, row))};\nAction: " for task, row in zip(tasks, bins, strict=True)]
        return {**batch, task_key: prompts}

    return prompt


class Pi05Policy(Pi0Policy):
    """pi0.5: pi0's inputs and outputs (:class:`Pi0Policy`), its own model and prompt."""

    vlm_stack = VLM_STACK

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, device: str = "cpu", seed: int = 0,
                        tokenizer: str | Path | None = None, asset_id: str | None = None) -> Pi05Policy:
        path = Path(checkpoint).expanduser()
        config, stats, shapes, root = read_pi_folder(path, "pi05", asset_id)
        vlm = gemma_dims(shapes, f"{root}paligemma_with_expert.paligemma.model.language_model.layers")
        expert = gemma_dims(shapes, f"{root}paligemma_with_expert.gemma_expert.model.layers")
        vocab = shapes[f"{root}paligemma_with_expert.paligemma.lm_head.weight"][0]
        sizes = FlowConfig(**FlowConfig.fields_of(config))
        with empty_model(torch.float32):
            model = Pi05Model(paligemma_config(vlm, vocab, int(config.get("image_resolution", [224])[0])),
                              expert, sizes)
        load_checked(model, path, pi05_converter(root))
        (pre, post), resize = pi_pipelines(path, stats, tokenizer, "pi05",
                                           {"pi05_prepare_state_tokenizer_processor_step": _state_prompt})
        return cls(model.to(device), config, pre, post, seed, resize=resize)

    def velocity_field(self, inputs: Mapping[str, torch.Tensor]) -> VelocityField:
        """Run the PaliGemma prefix once; return ``v(x, t)`` over its keys and values."""
        model, device = self.model, next(self.model.parameters()).device
        images = inputs["images"].to(device)
        cameras = images.shape[1]
        features = model.vlm.get_image_features(images.flatten(0, 1)).pooler_output
        tokens = inputs["lang_tokens"].to(device)
        embeds = torch.cat([features.reshape(1, cameras * TOKENS_PER_IMAGE, -1),
                            model.vlm.get_input_embeddings()(tokens)], dim=1)
        mask = torch.cat([inputs["image_masks"].repeat_interleave(TOKENS_PER_IMAGE, dim=1),
                          inputs["lang_attention_mask"].bool()], dim=1).to(device)
        cache = model.vlm(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=mask.long().cumsum(-1) - 1,
                          token_type_ids=torch.zeros_like(mask, dtype=torch.long), use_cache=True).past_key_values
        prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return lambda x, time: model.velocity(x, time, prefix_kv, mask)
