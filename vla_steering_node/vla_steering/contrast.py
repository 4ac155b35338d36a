"""Contrastive directions: the difference of mean residual streams between two sets of observations.

For each chosen layer, the residual stream after it (:class:`vla_steering.capture.ResidualCapture`)
is averaged over the observations of set A (e.g. "move up" instructions) and of set B ("move down");
``d = mean_A - mean_B``. Adding ``|d|`` times ``d / |d|`` to that layer's MLP output moves an average
B observation's residual there to A's. The result is a steering concept of mode ``add`` with the
unit directions (:class:`vla_steering.dictionaries.Concept` ``directions``), off by default, which the
node loads like any other and steers live; its description records each layer's ``|d|``.

Also reported: per layer the norm, the cosine with named neuron concepts' value-vector directions
(the unit sum of their value vectors at that layer, what ``add`` mode adds for them), and the
cosines between several pairs' directions (``cross_cosines``) with their statistics and a plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_steering.anatomy import primary_stack
from vla_steering.capture import record_residuals
from vla_steering.dictionaries import Concept, InterventionDictionary
from vla_steering.policies import Observation, SteeredPolicy


@dataclass(frozen=True)
class Contrast:
    """Per layer, the difference of mean residual streams of two observation sets.

    Attributes:
        stack: the decoder stack's module path.
        layers: layer indices.
        difference: (L, D) ``mean_A - mean_B``.
        count_a, count_b: observations per set.
    """

    stack: str
    layers: tuple[int, ...]
    difference: np.ndarray
    count_a: int
    count_b: int

    @property
    def norms(self) -> np.ndarray:
        return np.linalg.norm(self.difference, axis=1)

    def concept(self, name: str, description: str = "") -> Concept:
        """The directions as an ``add`` concept (strength 0: off until set; ``|d|`` is the natural strength)."""
        norms = ", ".join(f"L{layer}: {n:.3g}" for layer, n in zip(self.layers, self.norms, strict=True))
        return Concept(name, (), mode="add", strength=0.0, stack=self.stack,
                       description=f"{description or 'contrastive direction'} (|mean_A - mean_B| {norms})",
                       directions={layer: tuple(d) for layer, d in zip(self.layers, self.difference, strict=True)})

    def dictionary(self, name: str, description: str = "") -> InterventionDictionary:
        return InterventionDictionary({name: self.concept(name, description)})


def contrast(steered: SteeredPolicy, set_a: Sequence[Observation], set_b: Sequence[Observation],
             layers: Sequence[int], stack: str | None = None, position: str = "last") -> Contrast:
    """``mean_A - mean_B`` of the residual streams after each of ``layers``."""
    if not set_a or not set_b:
        raise ValueError("both observation sets need at least one observation")
    a = record_residuals(steered, set_a, layers, stack, position)[0]
    b = record_residuals(steered, set_b, layers, stack, position)[0]
    return residual_contrast(primary_stack(steered.policy.model, stack).name, layers, a, b)


def residual_contrast(stack: str, layers: Sequence[int], a: np.ndarray, b: np.ndarray) -> Contrast:
    """The contrast of captured residual streams ``a`` and ``b`` (N, layers, D)."""
    if not len(a) or not len(b):
        raise ValueError("both observation sets need at least one observation")
    return Contrast(stack, tuple(int(x) for x in layers), a.mean(axis=0) - b.mean(axis=0), len(a), len(b))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def concept_cosines(result: Contrast, model, concepts: Mapping[str, Concept]) -> dict[str, list[float | None]]:
    """Per neuron concept, per layer: cosine of the contrast with the unit sum of the concept's value vectors."""
    stack = primary_stack(model, result.stack)
    out = {}
    for name, concept in concepts.items():
        by_layer = concept.by_layer()
        row = []
        for layer, d in zip(result.layers, result.difference, strict=True):
            if layer not in by_layer:
                row.append(None)
                continue
            direction = stack.value_vectors(layer)[by_layer[layer]].sum(dim=0).double().numpy()
            row.append(float(_unit(d) @ _unit(direction)))
        out[name] = row
    return out


def cross_cosines(directions: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Names and the matrix of cosines between directions (e.g. several pairs' contrasts at one layer)."""
    names = list(directions)
    units = np.stack([_unit(np.asarray(directions[n], np.float64)) for n in names])
    return names, units @ units.T


def write_report(results: Mapping[str, Contrast], out: Path,
                 cosines: Mapping[str, Mapping[str, list[float | None]]] | None = None,
                 extra_directions: Mapping[int, Mapping[str, np.ndarray]] | None = None) -> Path:
    """``out/contrast.md``: per pair its norms and concept cosines; with several directions at a layer (pairs,
    or ``extra_directions`` such as SAE latent-difference directions) their cosine matrix,
    ``out/cross_cosines_L<layer>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Contrastive directions", ""]
    for name, result in results.items():
        rows = (cosines or {}).get(name, {})
        lines += [f"## `{name}`", "",
                  f"Stack `{result.stack}`; {result.count_a} observations in set A, {result.count_b} in set B.", "",
                  "| layer | norm of mean_A - mean_B |" + "".join(f" cos with `{c}` |" for c in rows),
                  "|---|---|" + "---|" * len(rows)]
        for i, (layer, norm) in enumerate(zip(result.layers, result.norms, strict=True)):
            cells = "".join(" – |" if row[i] is None else f" {row[i]:+.3f} |" for row in rows.values())
            lines.append(f"| {layer} | {norm:.4g} |{cells}")
        lines.append("")
    layers = sorted({layer for r in results.values() for layer in r.layers})
    for layer in layers:
        directions = {name: r.difference[r.layers.index(layer)] for name, r in results.items() if layer in r.layers}
        directions.update((extra_directions or {}).get(layer, {}))
        if len(directions) < 2:
            continue
        names, matrix = cross_cosines(directions)
        off_diagonal = matrix[~np.eye(len(names), dtype=bool)]
        figure, axes = plt.subplots(figsize=(1.6 + 0.8 * len(names), 1.2 + 0.7 * len(names)))
        image = axes.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm")
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axes.set_yticks(range(len(names)), names)
        for (i, j), value in np.ndenumerate(matrix):
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
        axes.set_title(f"layer {layer}")
        figure.colorbar(image)
        figure.tight_layout()
        figure.savefig(out / f"cross_cosines_L{layer}.png", dpi=100)
        plt.close(figure)
        lines += [f"## Cosines between directions at layer {layer}", "",
                  f"Off-diagonal: mean {off_diagonal.mean():+.3f}, mean |cos| {np.abs(off_diagonal).mean():.3f}, "
                  f"max |cos| {np.abs(off_diagonal).max():.3f}.", "",
                  f"![cosines at layer {layer}](cross_cosines_L{layer}.png)", ""]
    path = out / "contrast.md"
    path.write_text("\n".join(lines))
    return path
