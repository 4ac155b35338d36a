"""Linear probes: how linearly each layer's residual stream encodes each action dimension.

Per layer and action dimension, a ridge regression (scikit-learn's ``RidgeCV``: the penalty chosen
by leave-one-out error on the training split) from the residual stream at the decision token
(:class:`vla_steering.capture.ResidualCapture`) to the action the policy chose, fit on a training
split of the observations and scored by R² on the held-out rest. The same fit on shuffled actions
is the control: it finds no structure, so its R² is about 0 (slightly below: the held-out mean is
not the training mean). A dimension the policy never varies has no R² (NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ProbeResult:
    """Held-out R² per (layer, action dimension), and the shuffled-label control's."""

    layers: tuple[int, ...]
    dims: tuple[str, ...]
    r2: np.ndarray  # (L, A)
    control_r2: np.ndarray  # (L, A)
    train: int
    test: int


ALPHAS = np.logspace(-2, 6, 17)  # the ridge penalties RidgeCV chooses from


def fit_probes(residuals: np.ndarray, actions: np.ndarray, layers: Sequence[int], dims: Sequence[str],
               test_fraction: float = 0.3, seed: int = 0) -> ProbeResult:
    """Ridge probes per layer and dimension, scored on a held-out split; the shuffled-action control alike."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split

    n = len(actions)
    train, test = train_test_split(np.arange(n), test_size=test_fraction, random_state=seed)
    shuffled = actions[np.random.default_rng(seed).permutation(n)]
    r2 = np.full((len(layers), actions.shape[1]), np.nan)
    control = np.full_like(r2, np.nan)
    for i in range(len(layers)):
        x = residuals[:, i]
        for j in range(actions.shape[1]):
            if np.ptp(actions[test, j]) == 0.0:
                continue  # a constant held-out target has no R²
            for out, y in ((r2, actions[:, j]), (control, shuffled[:, j])):
                model = RidgeCV(alphas=ALPHAS).fit(x[train], y[train])
                out[i, j] = r2_score(y[test], model.predict(x[test]))
    return ProbeResult(tuple(int(x) for x in layers), tuple(dims), r2, control, len(train), len(test))


def write_report(result: ProbeResult, out: Path) -> Path:
    """``out/probes.md`` with the R² table and ``out/probes_r2.png`` (R² by layer, per dimension, and control)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 4))
    for j, dim in enumerate(result.dims):
        if np.all(np.isnan(result.r2[:, j])):
            continue
        line, = axes.plot(result.layers, result.r2[:, j], marker="o", label=dim)
        axes.plot(result.layers, result.control_r2[:, j], linestyle=":", color=line.get_color())
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_xlabel("layer")
    axes.set_ylabel("held-out R² (dotted: shuffled actions)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "probes_r2.png", dpi=100)
    plt.close(figure)
    header = "| layer |" + "".join(f" {d} |" for d in result.dims)
    lines = [f"# Linear probes: {result.train} training, {result.test} held-out observations", "",
             "Held-out R² of a ridge probe from the residual stream to each action dimension "
             "(in brackets: the same probe on shuffled actions).", "", header,
             "|---|" + "---|" * len(result.dims)]
    for i, layer in enumerate(result.layers):
        cells = "".join(" – |" if np.isnan(result.r2[i, j]) else
                        f" {result.r2[i, j]:.3f} ({result.control_r2[i, j]:.2f}) |" for j in range(len(result.dims)))
        lines.append(f"| {layer} |{cells}")
    lines += ["", "![R² by layer](probes_r2.png)"]
    path = out / "probes.md"
    path.write_text("\n".join(lines) + "\n")
    return path
