"""Contrastive directions from two sets of recorded runs: the difference of mean residual streams.

Every recorded observation of set A's bags and of set B's (as the counterfactual replay rebuilds
them: :func:`vla_steering_node.counterfactual.recorded_steps`) is run through the policy with a
residual capture on the chosen layers (:mod:`vla_steering.contrast`); ``mean_A - mean_B`` per layer
becomes a steering concept of mode ``add`` (off), with its norm and its cosine with the steering
dictionary's neuron concepts on the page.

``python -m vla_steering_node.bag_contrast --a BAG [BAG ...] --b BAG [BAG ...] --layers 25 [--position last]
--name up_down --out DIR`` writes ``DIR/<name>.yaml`` and ``DIR/contrast.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vla_steering.anatomy import primary_stack
from vla_steering.bags import BagError
from vla_steering.capture import POSITIONS, record_residuals
from vla_steering.contrast import Contrast, concept_cosines, residual_contrast, write_report
from vla_steering.dictionaries import save_dictionary
from vla_steering.policies import Observation, SteeredPolicy
from vla_steering_node.counterfactual import add_policy_arguments, recorded_steps, steered_from_arguments


def recorded_observations(bags: Sequence[str | Path], cameras: list[str], state_source: str,
                          gripper_joints: Sequence[str] = ("gripper_finger_left", "gripper_finger_right"),
                          ) -> list[Observation]:
    """Every recorded observation of ``bags``, in order."""
    observations = [o for bag in bags for _, o, _ in recorded_steps(bag, cameras, state_source, list(gripper_joints))]
    if not observations:
        raise BagError(f"none of {list(map(str, bags))} has an action chunk with its observation recorded")
    return observations


def bag_contrast(steered: SteeredPolicy, bags_a: Sequence[str | Path], bags_b: Sequence[str | Path],
                 layers: Sequence[int], cameras: list[str], state_source: str = "libero", stack: str | None = None,
                 position: str = "last") -> Contrast:
    """``mean_A - mean_B`` of the residual streams of the two sets' recorded observations (steering as given)."""
    a, b = (record_residuals(steered, recorded_observations(bags, cameras, state_source), layers, stack, position,
                             progress=True)[0] for bags in (bags_a, bags_b))
    return residual_contrast(primary_stack(steered.policy.model, stack).name, layers, a, b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", nargs="+", required=True, help="set A's bags (e.g. 'move up' runs)")
    parser.add_argument("--b", nargs="+", required=True, help="set B's bags (e.g. 'move down' runs)")
    add_policy_arguments(parser)
    parser.add_argument("--stack", default=None, help="decoder stack (module path; default: the primary)")
    parser.add_argument("--layers", required=True, help="comma-separated layers")
    parser.add_argument("--position", default="last", choices=POSITIONS,
                        help="the decision token, every position, or the instruction's tokens")
    parser.add_argument("--name", default="contrast", help="the concept's name")
    parser.add_argument("--out", required=True, help="output folder (<name>.yaml, contrast.md)")
    args = parser.parse_args(argv)
    try:
        layers = [int(x) for x in args.layers.split(",")]
        steered = steered_from_arguments(args)
        result = bag_contrast(steered, args.a, args.b, layers, args.cameras, args.state_source, args.stack,
                              args.position)
        neurons = {} if steered.engine is None else {n: c for n, c in steered.engine.dictionary.concepts.items()
                                                     if c.neurons}
        out = Path(args.out)
        description = f"{len(args.a)} bag(s) minus {len(args.b)} bag(s) ({args.position} position)"
        path = save_dictionary(result.dictionary(args.name, description), out / f"{args.name}.yaml")
        report = write_report({args.name: result}, out, {args.name: concept_cosines(result, steered.policy.model,
                                                                                    neurons)})
    except (BagError, KeyError, ValueError, FileNotFoundError) as error:
        print(f"contrast from bags failed: {error}", file=sys.stderr)
        return 1
    for layer, norm in zip(result.layers, result.norms, strict=True):
        print(f"layer {layer}: |mean_A - mean_B| = {norm:.4g} ({result.count_a} vs {result.count_b} observations)")
    print(f"concept {args.name!r} (mode add, off) -> {path}; report -> {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
