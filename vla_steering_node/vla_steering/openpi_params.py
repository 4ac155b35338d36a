"""Value-vector projection for openpi (JAX) pi0 / pi0-FAST checkpoints, without openpi.

An openpi checkpoint stores its parameters with orbax (``<checkpoint>/params``).
The Gemma decoder is under ``PaliGemma/llm``; its layers are scanned, so each
weight has a leading depth axis:

* ``layers/mlp/linear``: (depth, I, D), the down projection of the PaliGemma
  expert; ``layers/mlp_1/linear`` is the action expert's (pi0 only);
* ``embedder/input_embedding``: (V, D), tied unembedding;
* ``final_norm/scale`` (``final_norm_1`` for the action expert): (D,), an
  RMSNorm computed as ``x / rms(x) * (1 + scale)``.

Row ``i`` of ``linear[L]`` is neuron ``i``'s value vector, so the projection is
the same as for PyTorch models (:mod:`vla_steering.projection`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from vla_steering.projection import ProjectionSource

LLM_PATH = ("PaliGemma", "llm")


def load_param_tree(checkpoint: str | Path) -> Mapping:
    """Restore an orbax parameter tree as nested dicts of numpy arrays."""
    import orbax.checkpoint as ocp

    path = Path(checkpoint).expanduser().resolve()
    if (path / "params").is_dir():
        path = path / "params"
    if not path.is_dir():
        raise FileNotFoundError(f"openpi checkpoint {path} does not exist")
    tree = ocp.PyTreeCheckpointer().restore(path)
    return tree.get("params", tree)


def _subtree(tree: Mapping, keys: tuple[str, ...]) -> Mapping:
    node = tree
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError(f"checkpoint has no {'/'.join(keys)} (missing {key!r}); is this an openpi pi0 checkpoint?")
        node = node[key]
    return node


def _rms_norm(scale: np.ndarray, eps: float = 1e-6):
    gain = 1.0 + torch.as_tensor(np.asarray(scale, np.float32))

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * gain

    return norm


def openpi_source(tree: Mapping, expert: int = 0, name: str = "openpi") -> ProjectionSource:
    """A projection source over expert ``expert`` (0 = PaliGemma, 1 = pi0 action expert)."""
    llm = _subtree(tree, LLM_PATH)
    suffix = "" if expert == 0 else f"_{expert}"
    linear = np.asarray(_subtree(llm, ("layers", f"mlp{suffix}", "linear")), np.float32)  # (depth, I, D)
    embedding = np.asarray(_subtree(llm, ("embedder", "input_embedding")), np.float32)  # (V, D)
    if linear.ndim != 3 or linear.shape[2] != embedding.shape[1]:
        raise ValueError(
            f"mlp{suffix}/linear has shape {linear.shape}; expected (depth, I, {embedding.shape[1]}) "
            "to project through the embedding (the action expert's width differs from the vocabulary's)"
        )
    final = llm.get(f"final_norm{suffix}", {}).get("scale")
    vectors = torch.from_numpy(linear)
    return ProjectionSource(
        name=name,
        num_layers=linear.shape[0],
        intermediate_size=linear.shape[1],
        value_vectors=lambda layer: vectors[layer],
        unembedding=torch.from_numpy(embedding),
        final_norm=None if final is None else _rms_norm(final),
    )
