"""Activation mining: run recorded observations of bags through a policy and rank its neurons by activation.

Every action chunk of every bag whose observation was recorded (the images stamped like the chunk,
the robot state before it, the instruction: :func:`vla_steering_node.counterfactual.recorded_steps`)
is fed to the policy under the given steering, with an :class:`vla_steering.capture.ActivationCapture`
on the chosen layers (every position, or only each call's last: the decision token). The strongest
neurons (largest ``|activation|``) are joined with their value vectors' top tokens
(:mod:`vla_steering.projection`) and the frame that maximised each; optionally clustered (k-means in
semantic or weight space, :mod:`vla_steering.concepts`, with a t-SNE picture) and ranked by keywords'
token families.

**Two sets of runs** (``--versus``: e.g. bags of 'move up' runs against bags of 'move down' runs):
neurons are ranked by the difference of their mean activations (A - B) instead; with ``--attribute
WORD_A WORD_B`` by that difference times how much the neuron's value vector writes toward WORD_A's
token family rather than WORD_B's (the unit unembedding rows' means): the change between the runs'
direct contribution to the A-versus-B logit. With ``--keywords``, the page reports how many of the
listed neurons have those families in their top tokens against chance (every neuron of the mined
layers), with a hypergeometric p-value.

``python -m vla_steering_node.mining BAG [BAG ...] [--versus BAG ...] [--layers 10,11] [--top 40] --out DIR``
writes ``DIR/neuron_stats.npz`` (every neuron's statistics; with ``--versus`` also
``neuron_stats_versus.npz``), ``DIR/top_neurons.csv``, ``DIR/mined.yaml`` (the listed neurons as one
concept, a dictionary the node loads) and ``DIR/mining.md``.
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
import torch
from tqdm import tqdm

from vla_steering.anatomy import primary_stack, unembedding
from vla_steering.bags import BagError
from vla_steering.capture import ActivationCapture, NeuronStats
from vla_steering.concepts import cluster_neurons, family_direction, keyword_scores, neuron_features
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
         layers: Sequence[int] | None = None, progress: bool = True,
         position: str = "all") -> tuple[NeuronStats, list[Frame]]:
    """Statistics of the chosen layers' neurons over every recorded observation of ``bags``, and the frames."""
    frames: list[Frame] = []
    with ActivationCapture(steered.policy.model, stack, layers, position) as capture:
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


@dataclass(frozen=True)
class Enrichment:
    """How many listed neurons have a keyword family in their top tokens, against chance."""

    hits: int
    listed: int
    chance: float  # the fraction of all neurons of the mined layers that do
    p_value: float  # hypergeometric: P(at least ``hits`` in ``listed`` neurons drawn at random)

    def summary(self, keywords: Sequence[str]) -> str:
        return (f"{self.hits} of the {self.listed} listed neurons have the {list(keywords)} token families in their "
                f"top tokens; chance {self.chance * self.listed:.2f} ({self.chance:.2%} of the mined layers' "
                f"neurons), p = {self.p_value:.3g} (hypergeometric)")


def enrichment(projection: Projection, rows: Sequence[int], keywords: Sequence[str]) -> Enrichment:
    from scipy.stats import hypergeom

    matches = keyword_scores(projection, keywords) > 0
    hits = int(matches[list(rows)].sum())
    p_value = float(hypergeom.sf(hits - 1, len(matches), int(matches.sum()), len(rows)))
    return Enrichment(hits, len(rows), float(matches.mean()), p_value)


def attribution(steered: SteeredPolicy, stats: NeuronStats, toward: str, away: str) -> np.ndarray:
    """(L, I): each mined neuron's value vector dotted with ``toward``'s token family direction minus ``away``'s."""
    model = steered.policy.model
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("--attribute needs a policy whose model has a tokenizer (to find the words' tokens)")
    head, decode = unembedding(model), tokenizer_decoder(tokenizer)
    target = torch.as_tensor(family_direction(head, decode, toward) - family_direction(head, decode, away))
    stack = primary_stack(model, stats.stack)
    return np.stack([(stack.value_vectors(layer).double() @ target).numpy() for layer in stats.layers])


def ranking(stats: NeuronStats, versus: NeuronStats | None, weights: np.ndarray | None,
            count: int) -> list[tuple[int, int, float]]:
    """(layer, neuron, score) of the ``count`` top neurons: by max |activation|; with ``versus`` by
    |mean - versus mean|, times ``weights`` when given (the score keeps its sign)."""
    if versus is None:
        return stats.strongest(count)
    if versus.layers != stats.layers or versus.stack != stats.stack:
        raise ValueError("both sets of runs must be mined on the same stack and layers")
    score = stats.mean - versus.mean
    if weights is not None:
        score = score * weights
    flat = np.argsort(-np.abs(score), axis=None, kind="stable")[:count]
    rows, neurons = np.unravel_index(flat, score.shape)
    return [(stats.layers[r], int(n), float(score[r, n])) for r, n in zip(rows, neurons, strict=True)]


def write_results(stats: NeuronStats, frames: list[Frame], steered: SteeredPolicy, out: Path, top: int,
                  clusters: int = 0, space: str = "semantic", keywords: Sequence[str] = (),
                  versus: NeuronStats | None = None, attribute: Sequence[str] = (), fmt: str = "native") -> list[dict]:
    """neuron_stats.npz, top_neurons.csv, mined.yaml and mining.md (with clusters: mining_tsne.png) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stats.save(out / "neuron_stats.npz")
    if versus is not None:
        versus.save(out / "neuron_stats_versus.npz")
    weights = attribution(steered, stats, *attribute) if attribute else None
    listed = ranking(stats, versus, weights, top)
    projection = mined_projection(steered, stats)
    rows_of = [projection.row(layer, n) for layer, n, _ in listed]
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
    for i, ((layer, neuron, value), r) in enumerate(zip(listed, rows_of, strict=True)):
        index = stats.layers.index(layer)
        frame = frames[int(stats.argmax_observation[index, neuron])]
        row = {"layer": layer, "neuron": neuron, "max_abs": round(float(stats.max_abs[index, neuron]), 6),
               "mean": round(float(stats.mean[index, neuron]), 6)}
        if versus is not None:
            row |= {"mean_versus": round(float(versus.mean[index, neuron]), 6), "score": round(value, 6)}
        row |= {"bag": Path(frame.bag).name, "stamp_ns": frame.stamp_ns, "instruction": frame.instruction,
                "top_tokens": json.dumps([str(t) for t in tokens[r]])}
        if labels is not None:
            row["cluster"] = int(labels[i])
        if scores is not None:
            row["keyword_score"] = round(float(scores[r]), 4)
        rows.append(row)
    found = enrichment(projection, rows_of, keywords) if keywords else None
    if scores is not None:
        rows.sort(key=lambda row: -row["keyword_score"])
    with open(out / "top_neurons.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    how = "most active" if versus is None else "most differently active"
    concept = Concept("mined", tuple((r["layer"], r["neuron"]) for r in rows), mode="clamp", strength=0.0,
                      description=f"the {len(rows)} {how} neurons over {stats.observations} recorded observations"
                                  + ("" if versus is None else f" against {versus.observations}"), stack=stats.stack)
    save_dictionary(InterventionDictionary({"mined": concept}, intermediate_size=stats.max_abs.shape[1]),
                    out / "mined.yaml", fmt)
    extra = [k for k in ("mean_versus", "score", "cluster", "keyword_score") if k in rows[0]]
    runs = len({f.bag for f in frames})
    if versus is None:
        order = "ranked by max |activation|"
    else:
        order = (f"against {versus.observations} observations of the --versus runs, ranked by the difference of "
                 f"mean activations" + (f" times the value vector's {attribute[0]!r} - {attribute[1]!r} token "
                                        f"direction" if attribute else ""))
    lines = [f"# Activation mining: {stats.observations} observations from {runs} bag(s)",
             "", f"Stack `{stats.stack}`, layers {list(stats.layers)}; {order}; steering during the replay: "
                 f"{steered.engine.state.strengths if steered.engine else 'none'}"
                 + (f"; listed by the keywords {list(keywords)}" if keywords else "") + ".", ""]
    if found is not None:
        lines += [found.summary(keywords) + ".", ""]
    lines += ["| layer | neuron | max abs | mean |" + "".join(f" {k} |" for k in extra)
              + " top tokens | maximising frame |", "|---|---|---|---|" + "---|" * len(extra) + "---|---|"]
    lines += [f"| {r['layer']} | {r['neuron']} | {r['max_abs']:.3f} | {r['mean']:.3f} |"
              + "".join(f" {r[k]} |" for k in extra)
              + f" {_cell(json.loads(r['top_tokens']))} | {r['bag']} @ {r['stamp_ns'] / 1e9:.2f} s |" for r in rows]
    if labels is not None:
        lines += ["", f"k-means clusters ({clusters}, {space} space) of the listed neurons:", "",
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
    parser.add_argument("--keywords", nargs="*", default=[],
                        help="list them by these keywords' token families, with the hits against chance")
    parser.add_argument("--position", default="all", choices=("all", "last"),
                        help="every position of each forward call, or its last (the decision token)")
    parser.add_argument("--versus", nargs="+", default=[], help="bags of contrasting runs: rank by the difference")
    parser.add_argument("--attribute", nargs=2, default=[], metavar=("WORD_A", "WORD_B"),
                        help="with --versus: weight the difference by the value vector's WORD_A - WORD_B direction")
    parser.add_argument("--format", default="native", choices=("native", "reference"),
                        help="mined.yaml in this project's format or the CoRL 2025 paper's")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    try:
        if args.attribute and not args.versus:
            raise ValueError("--attribute needs --versus")
        steered = steered_from_arguments(args)
        stats, frames = mine(args.bags, steered, args.cameras, args.state_source, stack=args.stack, layers=layers,
                             position=args.position)
        versus = mine(args.versus, steered, args.cameras, args.state_source, stack=args.stack, layers=layers,
                      position=args.position)[0] if args.versus else None
        rows = write_results(stats, frames, steered, Path(args.out), args.top, args.clusters, args.space,
                             args.keywords, versus, args.attribute, args.format)
    except (BagError, KeyError, ValueError, FileNotFoundError) as error:
        print(f"activation mining failed: {error}", file=sys.stderr)
        return 1
    print(f"{stats.observations} observations; {len(rows)} neurons listed -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
