"""Activation mining: run recorded observations of bags through a policy and rank its neurons by activation.

Every action chunk of every bag whose observation was recorded (the images stamped like the chunk,
the robot state before it, the instruction: :func:`vla_steering_node.counterfactual.recorded_steps`)
is fed to the policy under the given steering, with an :class:`vla_steering.capture.ActivationCapture`
on the chosen layers. The strongest neurons (largest ``|activation|``) are joined with their
value vectors' top tokens (:mod:`vla_steering.projection`) and the frame that maximised each;
optionally clustered (k-means in semantic or weight space, :mod:`vla_steering.concepts`, with a
t-SNE picture) and ranked by keywords' token families.

``python -m vla_steering_node.mining BAG [BAG ...] [--layers 10,11] [--top 40] --out DIR`` writes
``DIR/neuron_stats.npz`` (every neuron's statistics), ``DIR/top_neurons.csv``, ``DIR/mined.yaml``
(the strongest neurons as one concept, a dictionary the node loads) and ``DIR/mining.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla_steering.bags import BagError
from vla_steering.capture import ActivationCapture, NeuronStats
from vla_steering.concepts import cluster_neurons, keyword_scores, neuron_features
from vla_steering.dictionaries import Concept, InterventionDictionary, save_dictionary
from vla_steering.policies import SteeredPolicy
from vla_steering.projection import Projection, project_value_vectors, source_from_model, tokenizer_decoder
from vla_steering_node.counterfactual import add_policy_arguments, recorded_steps, steered_from_arguments


@dataclass(frozen=True)
class Frame:
    """Where a captured observation came from."""

    bag: str
    stamp_ns: int
    instruction: str


def mine(bags: Sequence[str | Path], steered: SteeredPolicy, cameras: list[str], state_source: str = "libero",
         gripper_joints: Sequence[str] = ("gripper_finger_left", "gripper_finger_right"), stack: str | None = None,
         layers: Sequence[int] | None = None, progress: bool = True) -> tuple[NeuronStats, list[Frame]]:
    """Statistics of the chosen layers' neurons over every recorded observation of ``bags``, and the frames."""
    frames: list[Frame] = []
    with ActivationCapture(steered.policy.model, stack, layers) as capture:
        for bag in tqdm(bags, desc="mining bags", unit="bag", disable=not progress):
            for stamp, observation, _ in recorded_steps(bag, cameras, state_source, list(gripper_joints)):
                with capture.observation(len(frames)):
                    steered.act(observation)
                frames.append(Frame(str(bag), stamp, observation.instruction))
        stats = capture.stats()
    if not frames:
        raise BagError(f"none of {list(map(str, bags))} has an action chunk with its observation recorded")
    return stats, frames


def mined_projection(steered: SteeredPolicy, stats: NeuronStats, top_k: int = 8) -> Projection:
    """The value-vector projection of the mined layers (tokens decoded when the policy has a tokenizer)."""
    source = source_from_model(steered.policy.model, stack=stats.stack)
    projection = project_value_vectors(source, layers=stats.layers, top_k=top_k, progress=False)
    tokenizer = getattr(steered.policy.model, "tokenizer", None)
    if tokenizer is not None:
        projection.attach_tokens(tokenizer_decoder(tokenizer))
    return projection


def plot_tsne(features: np.ndarray, labels: np.ndarray, names: list[str], path: Path) -> Path:
    """A t-SNE picture of the strongest neurons' features, coloured by cluster, labelled by their first token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    points = TSNE(n_components=2, perplexity=min(30.0, (len(features) - 1) / 3), random_state=0,
                  init="random").fit_transform(features)
    figure, axes = plt.subplots(figsize=(7, 6))
    axes.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=30)
    for (x, y), name in zip(points, names, strict=True):
        axes.annotate(name, (x, y), fontsize=6)
    axes.set_title("strongest neurons (t-SNE), coloured by k-means cluster")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_results(stats: NeuronStats, frames: list[Frame], steered: SteeredPolicy, out: Path, top: int,
                  clusters: int = 0, space: str = "semantic", keywords: Sequence[str] = ()) -> list[dict]:
    """neuron_stats.npz, top_neurons.csv, mined.yaml and mining.md (with clusters: mining_tsne.png) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stats.save(out / "neuron_stats.npz")
    strongest = stats.strongest(top)
    projection = mined_projection(steered, stats)
    rows_of = [projection.row(layer, n) for layer, n, _ in strongest]
    tokens = projection.pos_tokens if projection.pos_tokens is not None else projection.pos_ids.astype(str)
    labels = None
    if clusters:
        source = source_from_model(steered.policy.model, stack=stats.stack)
        labels = cluster_neurons(source, projection, clusters, rows=rows_of, space=space)
        names = [str(tokens[r][0]) for r in rows_of]
        plot_tsne(neuron_features(source, projection, np.asarray(rows_of), space), labels, names,
                  out / "mining_tsne.png")
    scores = keyword_scores(projection, keywords) if keywords else None
    rows = []
    for i, ((layer, neuron, peak), r) in enumerate(zip(strongest, rows_of, strict=True)):
        index = stats.layers.index(layer)
        frame = frames[int(stats.argmax_observation[index, neuron])]
        row = {"layer": layer, "neuron": neuron, "max_abs": round(peak, 6),
               "mean": round(float(stats.mean[index, neuron]), 6), "bag": Path(frame.bag).name,
               "stamp_ns": frame.stamp_ns, "instruction": frame.instruction,
               "top_tokens": json.dumps([str(t) for t in tokens[r]])}
        if labels is not None:
            row["cluster"] = int(labels[i])
        if scores is not None:
            row["keyword_score"] = round(float(scores[r]), 4)
        rows.append(row)
    if scores is not None:
        rows.sort(key=lambda row: -row["keyword_score"])
    with open(out / "top_neurons.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    concept = Concept("mined", tuple((r["layer"], r["neuron"]) for r in rows), mode="clamp", strength=0.0,
                      description=f"the {len(rows)} most active neurons over {stats.observations} recorded "
                                  f"observations", stack=stats.stack)
    save_dictionary(InterventionDictionary({"mined": concept}, intermediate_size=stats.max_abs.shape[1]),
                    out / "mined.yaml")
    extra = [k for k in ("cluster", "keyword_score") if k in rows[0]]
    lines = [f"# Activation mining: {stats.observations} observations from {len({f.bag for f in frames})} bag(s)",
             "", f"Stack `{stats.stack}`, layers {list(stats.layers)}; steering during the replay: "
                 f"{steered.engine.state.strengths if steered.engine else 'none'}"
                 + (f"; ranked by the keywords {list(keywords)}" if keywords else "") + ".", "",
             "| layer | neuron | max abs | mean |" + "".join(f" {k} |" for k in extra)
             + " top tokens | maximising frame |", "|---|---|---|---|" + "---|" * len(extra) + "---|---|"]
    lines += [f"| {r['layer']} | {r['neuron']} | {r['max_abs']:.3f} | {r['mean']:.3f} |"
              + "".join(f" {r[k]} |" for k in extra)
              + f" {_cell(json.loads(r['top_tokens']))} | {r['bag']} @ {r['stamp_ns'] / 1e9:.2f} s |" for r in rows]
    if labels is not None:
        lines += ["", f"k-means clusters ({clusters}, {space} space) of the strongest neurons:", "",
                  "![t-SNE](mining_tsne.png)"]
    (out / "mining.md").write_text("\n".join(lines) + "\n")
    return rows


def _cell(tokens: list[str]) -> str:
    """Tokens as one Markdown table cell: code spans, pipes escaped, line breaks shown."""
    return " ".join("`" + t.replace("|", "\\|").replace("\n", "⏎").replace("`", "'") + "`" for t in tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bags", nargs="+")
    add_policy_arguments(parser)
    parser.add_argument("--stack", default=None, help="decoder stack (module path; default: the primary)")
    parser.add_argument("--layers", default="", help="comma-separated layers (default: all)")
    parser.add_argument("--top", type=int, default=40, help="how many strongest neurons to list and keep")
    parser.add_argument("--clusters", type=int, default=0, help="k-means clusters of them, with a t-SNE picture")
    parser.add_argument("--space", default="semantic", choices=("semantic", "weight"), help="clustering space")
    parser.add_argument("--keywords", nargs="*", default=[], help="rank them by these keywords' token families")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    try:
        steered = steered_from_arguments(args)
        stats, frames = mine(args.bags, steered, args.cameras, args.state_source, stack=args.stack, layers=layers)
        rows = write_results(stats, frames, steered, Path(args.out), args.top, args.clusters, args.space,
                             args.keywords)
    except (BagError, KeyError, ValueError, FileNotFoundError) as error:
        print(f"activation mining failed: {error}", file=sys.stderr)
        return 1
    print(f"{stats.observations} observations; the {len(rows)} strongest neurons -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
