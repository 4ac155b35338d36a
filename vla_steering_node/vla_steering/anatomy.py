"""Find the parts of a Hugging Face decoder that steering needs.

A gated-MLP decoder (Llama, Gemma, Gemma 3, Qwen, the PaliGemma Gemma inside
pi0, pi0's action expert) computes, per layer::

    h = down_proj(act_fn(gate_proj(x)) * up_proj(x))      # (B, T, D)

The input of ``down_proj`` is the neuron activation vector (B, T, I); column
``i`` of ``down_proj.weight`` (D, I) is neuron ``i``'s *value vector*.

A model may hold several decoder stacks (pi0: the VLM's language model and
the action expert). :class:`DecoderStack` names one of them; the first stack
found that feeds the unembedding is the *primary* stack, the one that value
vectors are read through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DecoderStack:
    """One list of decoder layers with gated MLPs.

    Attributes:
        name: dotted module path of the layer list (e.g. ``model.layers``).
        layers: the decoder layers, in order.
        final_norm: the norm applied after the last layer, if the stack has one.
    """

    name: str
    layers: tuple[nn.Module, ...]
    final_norm: nn.Module | None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def intermediate_size(self) -> int:
        return self.down_proj(0).in_features

    @property
    def hidden_size(self) -> int:
        return self.down_proj(0).out_features

    def down_proj(self, layer: int) -> nn.Linear:
        return self.layers[layer].mlp.down_proj

    def post_feedforward_norm(self, layer: int) -> nn.Module | None:
        """Gemma 2/3 normalise the MLP output before adding it to the residual."""
        return getattr(self.layers[layer], "post_feedforward_layernorm", None)

    def value_vectors(self, layer: int) -> torch.Tensor:
        """All value vectors of one layer as rows: (I, D)."""
        return self.down_proj(layer).weight.detach().T


def _has_gated_mlp(module: nn.Module) -> bool:
    mlp = getattr(module, "mlp", None)
    return mlp is not None and isinstance(getattr(mlp, "down_proj", None), nn.Linear)


def find_decoder_stacks(model: nn.Module) -> list[DecoderStack]:
    """Every ``ModuleList`` whose items all have ``mlp.down_proj``, in module order."""
    stacks = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and all(_has_gated_mlp(m) for m in module):
            parent_name = name.rsplit(".", 1)[0] if "." in name else ""
            parent = modules[parent_name]
            stacks.append(DecoderStack(name=name, layers=tuple(module), final_norm=getattr(parent, "norm", None)))
    if not stacks:
        raise ValueError(
            f"{type(model).__name__} has no decoder layers with a gated MLP (mlp.down_proj); "
            "steering supports Llama, Gemma, Gemma 3, Qwen and pi0-style decoders"
        )
    return stacks


def unembedding(model: nn.Module) -> torch.Tensor:
    """The (V, D) matrix that turns a residual vector into vocabulary logits.

    The LM head where the model has one, else the (tied) input embedding.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None and hasattr(model, "get_input_embeddings"):
        head = model.get_input_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(model).__name__} exposes neither an LM head nor an input embedding")
    return head.weight.detach()


def primary_stack(model: nn.Module, stack: str | None = None) -> DecoderStack:
    """The named stack, else the first whose width matches the unembedding (or the first, if none)."""
    stacks = find_decoder_stacks(model)
    if stack is not None:
        for candidate in stacks:
            if candidate.name == stack:
                return candidate
        raise ValueError(f"no decoder stack named {stack!r}; this model has {[s.name for s in stacks]}")
    try:
        width = unembedding(model).shape[1]
    except ValueError:  # a policy wrapper without its own LM head
        return stacks[0]
    for candidate in stacks:
        if candidate.hidden_size == width:
            return candidate
    return stacks[0]
