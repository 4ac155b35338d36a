"""Activation mining: run recorded observations of bags through a policy and rank its neurons by activation.

Every action chunk of every bag whose observation was recorded (the images stamped like the chunk,
the robot state before it, the instruction: :func:`vla_steering_node.counterfactual.recorded_steps`)
is fed to the policy under the given steering, with an :class:`vla_steering.capture.ActivationCapture`
on the chosen layers. The strongest neurons (largest ``|activation|``) are joined with their
value vectors' top tokens (through the policy's unembedding) and the frame that maximised each.

``python -m vla_steering_node.mining BAG [BAG ...] [--layers 10,11] [--top 40] --out DIR`` writes
``DIR/neuron_stats.npz`` (every neuron's statistics), ``DIR/top_neurons.csv``, ``DIR/mined.yaml``
(the strongest neurons as one concept, a dictionary the node loads) and ``DIR/mining.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vla_steering.anatomy import primary_stack, unembedding
from vla_steering.bags import BagError
from vla_steering.capture import ActivationCapture, NeuronStats
from vla_steering.dictionaries import Concept, InterventionDictionary, save_dictionary
from vla_steering.policies import SteeredPolicy
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


@torch.inference_mode()
def top_tokens(model: torch.nn.Module, stack: str, neurons: Sequence[tuple[int, int]],
               decode: Callable[[list[int]], list[str]] | None, k: int = 8) -> list[list[str]]:
    """Each neuron's value vector projected through the unembedding: its ``k`` top tokens (ids if no decoder)."""
    decoder, head = primary_stack(model, stack), unembedding(model).float()
    out = []
    for layer, neuron in neurons:
        ids = torch.topk(head @ decoder.value_vectors(layer)[neuron].float(), k).indices.tolist()
        out.append(decode(ids) if decode else [str(i) for i in ids])
    return out


def write_results(stats: NeuronStats, frames: list[Frame], steered: SteeredPolicy, out: Path, top: int) -> list[dict]:
    """neuron_stats.npz, top_neurons.csv, mined.yaml and mining.md in ``out``; the CSV's rows."""
    out.mkdir(parents=True, exist_ok=True)
    stats.save(out / "neuron_stats.npz")
    strongest = stats.strongest(top)
    tokenizer = getattr(steered.policy.model, "tokenizer", None)
    decode = (lambda ids: [tokenizer.decode([i]) for i in ids]) if tokenizer is not None else None
    tokens = top_tokens(steered.policy.model, stats.stack, [(layer, n) for layer, n, _ in strongest], decode)
    rows = []
    for (layer, neuron, peak), words in zip(strongest, tokens, strict=True):
        row = stats.layers.index(layer)
        frame = frames[int(stats.argmax_observation[row, neuron])]
        rows.append({"layer": layer, "neuron": neuron, "max_abs": round(peak, 6),
                     "mean": round(float(stats.mean[row, neuron]), 6), "bag": Path(frame.bag).name,
                     "stamp_ns": frame.stamp_ns, "instruction": frame.instruction, "top_tokens": json.dumps(words)})
    with open(out / "top_neurons.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    concept = Concept("mined", tuple((r["layer"], r["neuron"]) for r in rows), mode="clamp", strength=0.0,
                      description=f"the {len(rows)} most active neurons over {stats.observations} recorded "
                                  f"observations", stack=stats.stack)
    save_dictionary(InterventionDictionary({"mined": concept}, intermediate_size=stats.max_abs.shape[1]),
                    out / "mined.yaml")
    lines = [f"# Activation mining: {stats.observations} observations from {len({f.bag for f in frames})} bag(s)",
             "", f"Stack `{stats.stack}`, layers {list(stats.layers)}; steering during the replay: "
                 f"{steered.engine.state.strengths if steered.engine else 'none'}.", "",
             "| layer | neuron | max abs | mean | top tokens | maximising frame |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['neuron']} | {r['max_abs']:.3f} | {r['mean']:.3f} | {_cell(words)} | "
              f"{r['bag']} @ {r['stamp_ns'] / 1e9:.2f} s |" for r, words in zip(rows, tokens, strict=True)]
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
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    try:
        steered = steered_from_arguments(args)
        stats, frames = mine(args.bags, steered, args.cameras, args.state_source, stack=args.stack, layers=layers)
        rows = write_results(stats, frames, steered, Path(args.out), args.top)
    except (BagError, KeyError, ValueError, FileNotFoundError) as error:
        print(f"activation mining failed: {error}", file=sys.stderr)
        return 1
    print(f"{stats.observations} observations; the {len(rows)} strongest neurons -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
