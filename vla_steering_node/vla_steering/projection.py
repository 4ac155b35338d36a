"""Project FFN value vectors through the unembedding: what each neuron "writes".

For layer ``L`` and neuron ``i`` the value vector ``v = down_proj.weight[:, i]``
(D,) is turned into vocabulary logits ``U @ f(v)`` (V,), where ``U`` is the
unembedding and ``f`` is one of the variants:

* ``raw``: ``f(v) = v`` (the reference implementation's default);
* ``final_norm``: ``f(v) = final_norm(v)``;
* ``post_ffn_final_norm``: ``f(v) = final_norm(post_feedforward_norm_L(v))``,
  for models whose MLP output is normalised before the residual (Gemma 2/3).

Each neuron keeps its top-k tokens for ``+v`` (largest logits) and ``-v``
(smallest logits, i.e. what the neuron writes when its activation is negative).

Artifacts (:meth:`Projection.save`): ``projection.npz`` holds, one row per
neuron, ``layer``, ``neuron``, ``flat_index`` (``layer * intermediate_size +
neuron``, the reference dictionaries' key), ``pos_ids``/``pos_logits``/
``pos_tokens`` and ``neg_ids``/``neg_logits``/``neg_tokens`` (N, k), and a JSON
``meta`` string; ``top_tokens.txt`` is the same for people.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vla_steering.anatomy import primary_stack, unembedding

VARIANTS = ("raw", "final_norm", "post_ffn_final_norm")

Norm = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ProjectionSource:
    """What a projection reads, independent of the framework that loaded it.

    Attributes:
        name: model name, stored in the artifact.
        num_layers, intermediate_size: the FFN shape.
        value_vectors: layer -> (I, D) tensor, one value vector per row.
        unembedding: (V, D).
        final_norm: applied for the ``final_norm`` variants, if the model has one.
        post_ffn_norm: layer -> that layer's post-feedforward norm, or None.
    """

    name: str
    num_layers: int
    intermediate_size: int
    value_vectors: Callable[[int], torch.Tensor]
    unembedding: torch.Tensor
    final_norm: Norm | None = None
    post_ffn_norm: Callable[[int], Norm | None] = lambda layer: None

    def transform(self, variant: str, layer: int) -> Norm:
        if variant not in VARIANTS:
            raise ValueError(f"unknown projection variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if variant == "raw":
            return lambda v: v
        if self.final_norm is None:
            raise ValueError(f"variant {variant!r} needs a final norm, and {self.name} has none")
        if variant == "final_norm":
            return self.final_norm
        post = self.post_ffn_norm(layer)
        if post is None:
            raise ValueError(f"variant {variant!r} needs a post-feedforward norm, and {self.name} has none")
        final = self.final_norm
        return lambda v: final(post(v))


def source_from_model(model: nn.Module, name: str = "", stack: str | None = None) -> ProjectionSource:
    """A projection source over a loaded PyTorch decoder (its primary stack by default)."""
    decoder = primary_stack(model, stack)
    return ProjectionSource(
        name=name or type(model).__name__,
        num_layers=decoder.num_layers,
        intermediate_size=decoder.intermediate_size,
        value_vectors=decoder.value_vectors,
        unembedding=unembedding(model),
        final_norm=decoder.final_norm,
        post_ffn_norm=decoder.post_feedforward_norm,
    )


@dataclass
class Projection:
    """Top tokens of every projected neuron; rows are neurons."""

    layer: np.ndarray  # (N,) int32
    neuron: np.ndarray  # (N,) int32
    flat_index: np.ndarray  # (N,) int64
    pos_ids: np.ndarray  # (N, k) int64
    pos_logits: np.ndarray  # (N, k) float32
    neg_ids: np.ndarray  # (N, k) int64
    neg_logits: np.ndarray  # (N, k) float32
    meta: dict = field(default_factory=dict)
    pos_tokens: np.ndarray | None = None  # (N, k) str
    neg_tokens: np.ndarray | None = None  # (N, k) str

    def __len__(self) -> int:
        return len(self.layer)

    def row(self, layer: int, neuron: int) -> int:
        hits = np.flatnonzero((self.layer == layer) & (self.neuron == neuron))
        if len(hits) == 0:
            raise KeyError(f"layer {layer} neuron {neuron} is not in this projection")
        return int(hits[0])

    def attach_tokens(self, decode: Callable[[Sequence[int]], list[str]]) -> None:
        """Fill ``pos_tokens``/``neg_tokens`` with ``decode(ids)`` (one string per id)."""
        unique = np.unique(np.concatenate([self.pos_ids.ravel(), self.neg_ids.ravel()]))
        names = np.asarray(decode(unique.tolist()), dtype=str)
        self.pos_tokens = names[np.searchsorted(unique, self.pos_ids)]
        self.neg_tokens = names[np.searchsorted(unique, self.neg_ids)]

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``projection.npz`` and ``top_tokens.txt``; return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in ARRAY_FIELDS if getattr(self, name) is not None}
        npz = directory / "projection.npz"
        np.savez_compressed(npz, meta=np.asarray(json.dumps(self.meta)), **arrays)
        txt = directory / "top_tokens.txt"
        with txt.open("w", encoding="utf-8") as out:
            out.write(f"# {json.dumps(self.meta)}\n# layer neuron flat_index | +v top tokens | -v top tokens\n")
            for r in range(len(self)):
                pos = self.pos_tokens[r] if self.pos_tokens is not None else self.pos_ids[r]
                neg = self.neg_tokens[r] if self.neg_tokens is not None else self.neg_ids[r]
                out.write(
                    f"L{self.layer[r]} N{self.neuron[r]} {self.flat_index[r]} | "
                    f"{' '.join(map(repr, map(str, pos)))} | {' '.join(map(repr, map(str, neg)))}\n"
                )
        return npz, txt

    @classmethod
    def load(cls, path: str | Path) -> Projection:
        path = Path(path)
        if path.is_dir():
            path = path / "projection.npz"
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ARRAY_FIELDS if name in data.files}
            meta = json.loads(str(data["meta"]))
        return cls(meta=meta, **arrays)


ARRAY_FIELDS = (
    "layer", "neuron", "flat_index", "pos_ids", "pos_logits", "neg_ids", "neg_logits", "pos_tokens", "neg_tokens"
)


def rows_per_batch(vocab_size: int, memory_budget_mb: float) -> int:
    """Neurons per batch so that one (B, V) float32 logits block fits the budget."""
    return max(1, int(memory_budget_mb * 2**20 // (4 * vocab_size * 2)))  # logits + topk scratch


@torch.inference_mode()
def project_value_vectors(
    source: ProjectionSource,
    *,
    layers: Sequence[int] | None = None,
    top_k: int = 10,
    variant: str = "raw",
    memory_budget_mb: float = 256.0,
    progress: bool = True,
) -> Projection:
    """Project every value vector of the chosen layers; memory bounded by ``memory_budget_mb``."""
    layers = list(range(source.num_layers)) if layers is None else [int(x) for x in layers]
    for layer in layers:
        if not 0 <= layer < source.num_layers:
            raise ValueError(f"layer {layer} out of range: {source.name} has layers 0..{source.num_layers - 1}")
    unembed_t = source.unembedding.float().T.contiguous()  # (D, V)
    vocab = unembed_t.shape[1]
    if not 0 < top_k <= vocab:
        raise ValueError(f"top_k must be in 1..{vocab}, got {top_k}")
    batch = rows_per_batch(vocab, memory_budget_mb)
    width = source.intermediate_size
    n = len(layers) * width
    pos_ids = np.empty((n, top_k), np.int64)
    neg_ids = np.empty((n, top_k), np.int64)
    pos_logits = np.empty((n, top_k), np.float32)
    neg_logits = np.empty((n, top_k), np.float32)
    bar = tqdm(total=n, desc="projecting value vectors", unit="neuron", disable=not progress)
    for j, layer in enumerate(layers):
        transform = source.transform(variant, layer)
        vectors = source.value_vectors(layer).float()  # (I, D)
        for start in range(0, width, batch):
            stop = min(start + batch, width)
            logits = transform(vectors[start:stop]) @ unembed_t  # (B, V)
            top = torch.topk(logits, top_k, dim=1)
            bottom = torch.topk(logits, top_k, dim=1, largest=False)
            rows = slice(j * width + start, j * width + stop)
            pos_ids[rows], pos_logits[rows] = top.indices.numpy(), top.values.numpy()
            neg_ids[rows], neg_logits[rows] = bottom.indices.numpy(), bottom.values.numpy()
            bar.update(stop - start)
    bar.close()
    layer_col = np.repeat(np.asarray(layers, np.int32), width)
    neuron_col = np.tile(np.arange(width, dtype=np.int32), len(layers))
    return Projection(
        layer=layer_col,
        neuron=neuron_col,
        flat_index=layer_col.astype(np.int64) * width + neuron_col,
        pos_ids=pos_ids,
        pos_logits=pos_logits,
        neg_ids=neg_ids,
        neg_logits=neg_logits,
        meta={
            "model": source.name,
            "variant": variant,
            "top_k": top_k,
            "num_layers": source.num_layers,
            "intermediate_size": width,
            "vocab_size": vocab,
            "layers": layers,
        },
    )


def tokenizer_decoder(tokenizer) -> Callable[[Sequence[int]], list[str]]:
    """Decode token ids one by one, keeping the leading-space marker visible as a space."""
    return lambda ids: tokenizer.batch_decode([[i] for i in ids])
