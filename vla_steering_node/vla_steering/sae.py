"""Sparse autoencoders on captured residual streams: TopK and BatchTopK, trained on this CPU.

``x -> z = TopK(ReLU(W_enc (x - b_dec) + b_enc)) -> x_hat = W_dec z + b_dec``, the decoder's columns
kept at unit norm, trained on mean squared error (Adam). **TopK** keeps each sample's ``k`` largest
pre-activations; **BatchTopK** keeps the ``k * batch`` largest of the whole batch during training
(samples share a budget) and, at inference, every pre-activation above a threshold estimated during
training (the running mean of the smallest kept value), so a sample's code does not depend on
the batch it is in.

Reported: the fraction of variance unexplained (FVU) on held-out data, the fraction of features
that never fire on it (dead), and per feature the samples that activate it most. A feature's
decoder column is a residual-stream direction: :func:`feature_concept` makes it a steerable concept
(mode ``add``; :class:`vla_steering.dictionaries.Concept` ``directions``); so is the decoder's image
of the difference of two sets' mean codes (:func:`latent_difference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vla_steering.dictionaries import Concept

KINDS = ("topk", "batchtopk")


class SparseAutoencoder(nn.Module):
    def __init__(self, width: int, features: int, k: int, kind: str = "topk"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not 0 < k <= features:
            raise ValueError(f"k must be in 1..{features}, got {k}")
        self.kind, self.k = kind, k
        self.encoder = nn.Linear(width, features)
        self.decoder = nn.Linear(features, width, bias=False)
        self.b_dec = nn.Parameter(torch.zeros(width))
        self.register_buffer("threshold", torch.tensor(0.0))
        with torch.no_grad():
            self.decoder.weight.copy_(self.encoder.weight.T)
            self.normalize_decoder()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.decoder.weight /= self.decoder.weight.norm(dim=0, keepdim=True).clamp_min(1e-12)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.encoder(x - self.b_dec))
        if self.kind == "topk":
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        if self.training:  # the batch shares k * batch activations
            flat = pre.flatten()
            kept = flat.topk(min(self.k * len(pre), flat.numel()))
            smallest = kept.values[-1].detach()
            self.threshold.mul_(0.99).add_(0.01 * smallest)
            return torch.zeros_like(flat).scatter(0, kept.indices, kept.values).view_as(pre)
        return pre * (pre > self.threshold)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decoder(z) + self.b_dec, z


@dataclass
class TrainedSAE:
    sae: SparseAutoencoder
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_sae(data: np.ndarray, features: int, k: int, kind: str = "topk", steps: int = 2000, batch: int = 64,
              lr: float = 1e-3, seed: int = 0) -> TrainedSAE:
    """Fit an SAE to ``data`` (N, D); the decoder bias starts at the data's mean."""
    import time

    torch.manual_seed(seed)
    x = torch.as_tensor(data, dtype=torch.float32)
    sae = SparseAutoencoder(x.shape[1], features, k, kind)
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(dim=0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    sae.train()
    for _ in range(steps):
        sample = x[torch.randint(len(x), (min(batch, len(x)),), generator=generator)]
        reconstruction, _ = sae(sample)
        loss = (reconstruction - sample).pow(2).sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sae.normalize_decoder()
        losses.append(loss.item())
    sae.eval()
    return TrainedSAE(sae, losses, time.perf_counter() - start)


@torch.no_grad()
def codes(sae: SparseAutoencoder, data: np.ndarray) -> np.ndarray:
    return sae.encode(torch.as_tensor(data, dtype=torch.float32)).numpy()


@torch.no_grad()
def fraction_of_variance_unexplained(sae: SparseAutoencoder, data: np.ndarray) -> float:
    x = torch.as_tensor(data, dtype=torch.float32)
    reconstruction, _ = sae(x)
    return float((x - reconstruction).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum())


def dead_fraction(sae: SparseAutoencoder, data: np.ndarray) -> float:
    """The fraction of features that fire on no sample of ``data``."""
    return float(np.mean(~(codes(sae, data) > 0).any(axis=0)))


def top_samples(sae: SparseAutoencoder, data: np.ndarray, feature: int, count: int = 10) -> np.ndarray:
    """Indices of the samples that activate ``feature`` most, strongest first (only those where it fires)."""
    activation = codes(sae, data)[:, feature]
    order = np.argsort(-activation, kind="stable")[:count]
    return order[activation[order] > 0]


def feature_concept(sae: SparseAutoencoder, feature: int, name: str, layer: int, stack: str | None,
                    strength: float = 0.0) -> Concept:
    """Feature ``feature``'s decoder direction as an ``add`` concept at ``layer``."""
    direction = sae.decoder.weight[:, feature].detach().double().numpy()
    return Concept(name, (), mode="add", strength=strength, stack=stack,
                   description=f"SAE feature {feature} ({sae.kind}, k={sae.k}) decoder direction",
                   directions={layer: tuple(direction)})


def latent_difference(sae: SparseAutoencoder, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Set A's mean code minus set B's (F,), and what the decoder makes of it: a residual-stream direction (D,).

    ``W_dec (mean z_A - mean z_B)`` is the contrast seen through the SAE's features: the part of
    ``mean_A - mean_B`` the features explain, without the reconstruction error's share.
    """
    if not len(a) or not len(b):
        raise ValueError("both sets need at least one sample")
    dz = codes(sae, a).mean(axis=0).astype(np.float64) - codes(sae, b).mean(axis=0)
    return dz, sae.decoder.weight.detach().double().numpy() @ dz


def save_sae(sae: SparseAutoencoder, path, layer: int, stack: str | None, position: str) -> None:
    """The weights and what they were trained on (layer, stack, capture position)."""
    torch.save({"kind": sae.kind, "k": sae.k, "width": sae.encoder.in_features, "features": sae.encoder.out_features,
                "layer": layer, "stack": stack, "position": position, "state_dict": sae.state_dict()}, path)


def load_sae(path) -> tuple[SparseAutoencoder, dict]:
    """(the SAE, its metadata: layer, stack, position) from :func:`save_sae`'s file."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise ValueError(f"{path} is not a sparse autoencoder written by vla-steer sae")
    sae = SparseAutoencoder(saved["width"], saved["features"], saved["k"], saved["kind"])
    sae.load_state_dict(saved["state_dict"])
    return sae.eval(), {k: saved[k] for k in ("layer", "stack", "position")}


def write_report(trained: TrainedSAE, data: np.ndarray, held_out: np.ndarray, observations: list,
                 actions: np.ndarray, dims: tuple[str, ...], out, listed: int = 16) -> object:
    """``out/sae.md``: held-out FVU, dead features, training; per listed feature its top instructions and actions,
    with ``out/sae_gallery.png`` (each listed feature's top frames)."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sae = trained.sae
    activation = codes(sae, data)
    ranked = np.argsort(-activation.max(axis=0), kind="stable")[:listed]
    fvu = fraction_of_variance_unexplained(sae, data[held_out])
    lines = [f"# Sparse autoencoder ({sae.kind}, {sae.decoder.weight.shape[1]} features, k={sae.k})", "",
             f"- held-out fraction of variance unexplained: {fvu:.4f}",
             f"- dead features on held-out data: {dead_fraction(sae, data[held_out]):.1%}",
             f"- trained on {len(data) - len(held_out)} samples in {trained.seconds:.1f} s "
             f"({len(trained.losses)} steps; final loss {trained.losses[-1]:.4g})", "",
             "| feature | max activation | fires on | top instructions | mean action of its top samples |",
             "|---|---|---|---|---|"]
    figure, axes = plt.subplots(len(ranked), 6, figsize=(6, len(ranked)), squeeze=False)
    for row, feature in enumerate(ranked):
        top = top_samples(sae, data, int(feature), 10)
        texts = sorted({observations[i].instruction for i in top})[:5]
        mean_action = actions[top].mean(axis=0) if len(top) else np.zeros(len(dims))
        action_text = ", ".join(f"{d} {v:+.2f}" for d, v in zip(dims, mean_action, strict=True) if abs(v) >= 0.05)
        lines.append(f"| {feature} | {activation[:, feature].max():.3f} | {np.mean(activation[:, feature] > 0):.1%} "
                     f"| {'; '.join(texts)} | {action_text or '~0'} |")
        for col in range(6):
            axis = axes[row, col]
            axis.axis("off")
            if col < len(top):
                axis.imshow(next(iter(observations[top[col]].images.values())))
        axes[row, 0].set_title(f"f{feature}", fontsize=6, loc="left")
    figure.tight_layout()
    figure.savefig(out / "sae_gallery.png", dpi=80)
    plt.close(figure)
    lines += ["", "Top frames of each listed feature:", "", "![gallery](sae_gallery.png)"]
    path = out / "sae.md"
    path.write_text("\n".join(lines) + "\n")
    return path
