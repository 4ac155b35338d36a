"""Evaluation outputs: the results table, the success-rate view of it, plots, a Markdown report.

Input: one row per episode (:func:`vla_steering.metrics.episode_metrics` plus the run's
``suite``, ``task_id``, ``init_state``, ``condition``, ``concept``, ``strength`` and ``bag``) and
the episodes themselves for the trajectory plots. Comparisons pair each steered episode with
the baseline episode of the same task and init state.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vla_steering.metrics import Episode, mean_ci

BASELINE = "baseline"


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def success_rates(rows: Sequence[dict]) -> list[dict]:
    """Success rate per (suite, task, condition): a view of the results table."""
    groups: dict[tuple, list[bool]] = defaultdict(list)
    for row in rows:
        groups[(row["suite"], row["task_id"], row["condition"])].append(bool(row.get("success")))
    return [{"suite": s, "task_id": t, "condition": c, "episodes": len(v), "success_rate": float(np.mean(v))}
            for (s, t, c), v in sorted(groups.items())]


def comparisons(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Per steered condition: mean ± 95% CI of (steered − baseline) over paired episodes (same task, init state
    and seed), per metric."""
    def key(r: dict) -> tuple:
        return r["suite"], r["task_id"], r["init_state"], r.get("seed")

    base = {key(r): r for r in rows if r["condition"] == BASELINE}
    by_condition: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for r in rows:
        pair = base.get(key(r))
        if r["condition"] != BASELINE and pair is not None:
            by_condition[r["condition"]].append((r, pair))
    out = []
    for condition, pairs in sorted(by_condition.items()):
        entry = {"condition": condition, "pairs": len(pairs)}
        for key in keys:
            mean, half = mean_ci([s[key] - b[key] for s, b in pairs if key in s and key in b])
            entry[key] = mean
            entry[f"{key}_ci95"] = half
        out.append(entry)
    return out


def plot_trajectories(episodes: dict[str, Episode], path: Path, title: str) -> Path:
    """EE height and speed over sim time per condition, and height minus the baseline's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    base = episodes.get(BASELINE)
    for name, ep in episodes.items():
        if len(ep.times_s) < 2:
            continue
        t = ep.times_s - ep.times_s[0]
        axes[0].plot(t, ep.ee_pos[:, 2], label=name)
        speed = np.linalg.norm(np.diff(ep.ee_pos, axis=0), axis=1) / np.diff(ep.times_s)
        axes[1].plot(t[1:], speed, label=name)
        if base is not None and name != BASELINE and len(base.times_s) > 1:
            n = min(len(ep.times_s), len(base.times_s))
            axes[2].plot(t[:n], ep.ee_pos[:n, 2] - base.ee_pos[:n, 2], label=f"{name} − baseline")
    axes[0].set_ylabel("EE height (m)")
    axes[1].set_ylabel("EE speed (m/s)")
    axes[2].set_ylabel("height − baseline (m)")
    axes[2].set_xlabel("sim time (s)")
    axes[2].axhline(0, color="grey", lw=0.5)
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_success(rates: Sequence[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['suite']} t{r['task_id']}\n{r['condition']}" for r in rates]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rates)), 3.5))
    ax.bar(range(len(rates)), [r["success_rate"] for r in rates])
    ax.set_xticks(range(len(rates)), labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sweep(rows: Sequence[dict], key: str, path: Path) -> Path | None:
    """Effect (metric minus the paired baseline) vs strength, per concept; None if nothing to sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = {(r["suite"], r["task_id"], r["init_state"]): r for r in rows if r["condition"] == BASELINE}
    series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        b = base.get((r["suite"], r["task_id"], r["init_state"]))
        if r.get("concept") and b is not None and key in r and key in b:
            series[r["concept"]][float(r["strength"])].append(r[key] - b[key])
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for concept, points in series.items():
        strengths = sorted(points)
        stats = [mean_ci(points[s]) for s in strengths]
        ax.errorbar([0.0, *strengths], [0.0, *[m for m, _ in stats]],
                    yerr=[0.0, *[0.0 if np.isnan(h) else h for _, h in stats]], marker="o", label=concept)
    ax.set_xlabel("strength")
    ax.set_ylabel(f"{key} − baseline")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(rows: Sequence[dict], episodes: dict[tuple, dict[str, Episode]], out: Path,
                 horizon_steps: int) -> Path:
    """results.csv, success_rate.csv, PNG plots and report.md in ``out``; returns report.md."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    rates = success_rates(rows)
    write_csv(rates, out / "success_rate.csv")
    keys = [f"height_gain_{horizon_steps}", "dz_per_step", "height_mean", "height_max", "speed_mean",
            "path_length", "displacement_x", "displacement_y", "displacement_z"]
    compared = comparisons(rows, keys)
    lines = ["# vla-steer evaluation", "",
             f"{len(rows)} episodes; results table `results.csv` (one row per episode), success rates "
             "`success_rate.csv`. Effects are steered − baseline, paired by task, init state and seed, mean ± 95% CI "
             f"(n = pairs). `height_gain_{horizon_steps}` and `dz_per_step` do not depend on episode length.", "",
             "## Success rate", "", "| suite | task | condition | episodes | success rate |", "|---|---|---|---|---|"]
    lines += [f"| {r['suite']} | {r['task_id']} | {r['condition']} | {r['episodes']} | {r['success_rate']:.2f} |"
              for r in rates]
    lines += ["", f"![success rates]({plot_success(rates, out / 'success_rate.png').name})", "",
              "## Effects against the baseline", ""]
    if compared:
        shown = keys[:4] + ["displacement_z"]
        lines += ["| condition | n | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
        for c in compared:
            cells = [f"{c[k]:+.4f} ± {c[k + '_ci95']:.4f}" if np.isfinite(c[k + "_ci95"]) else f"{c[k]:+.4f}"
                     for k in shown]
            lines.append(f"| {c['condition']} | {c['pairs']} | " + " | ".join(cells) + " |")
    else:
        lines.append("No steered condition with a paired baseline.")
    sweep = plot_sweep(rows, f"height_gain_{horizon_steps}", out / "strength_sweep.png")
    if sweep is not None:
        lines += ["", f"![effect vs strength]({sweep.name})"]
    lines += ["", "## Trajectories", ""]
    for (suite, task, init), by_condition in sorted(episodes.items()):
        name = f"trajectory_{suite}_t{task}_i{init}.png"
        plot_trajectories(by_condition, out / name, f"{suite} task {task} init {init}")
        lines += [f"### {suite} task {task}, init state {init}", "", f"![trajectories]({name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
