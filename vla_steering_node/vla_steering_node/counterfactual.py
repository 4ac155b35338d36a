"""Counterfactual replay: what would another steering setting have done on a recorded episode?

For every action chunk in a bag, the observation that produced it (the camera images stamped
like the chunk, the latest robot state before it, the instruction) is fed to the policy under a
different steering configuration (or none); the new actions are written next to the recorded
ones. No robot and no simulator: one recorded run answers "what would 'up' at 4.0 have done here?".

``python -m vla_steering_node.counterfactual BAG --strength up=4.0 [--dictionary D] --out cf.csv``
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from vla_steering import contract
from vla_steering.bags import BagError, read_bag
from vla_steering.policies import Observation, SteeredPolicy, make_policy, steer_from_file
from vla_steering_node.conversions import image_to_rgb, joint_positions, pose_state


def recorded_steps(bag: str | Path, cameras: list[str], state_source: str, gripper_joints: list[str]):
    """(stamp_ns, observation, recorded actions (T, D)) for each recorded action chunk."""
    images: dict[tuple[str, int], np.ndarray] = {}
    states: list[tuple[int, np.ndarray]] = []
    instruction, pose, chunks = "", None, []
    image_topics = {contract.camera(c).in_bag: c for c in cameras}
    for m in read_bag(bag):
        stamp = m.message.header.stamp.sec * 10**9 + m.message.header.stamp.nanosec \
            if hasattr(m.message, "header") else m.timestamp_ns
        if m.topic in image_topics:
            images[(image_topics[m.topic], stamp)] = image_to_rgb(m.message)
        elif m.topic == contract.EE_POSE.in_bag:
            pose = m.message
        elif m.topic == contract.JOINT_STATES.in_bag:
            state = pose_state(pose, m.message, gripper_joints) if state_source == "libero" and pose is not None \
                else joint_positions(m.message)
            states.append((stamp, state))
        elif m.topic == contract.INSTRUCTION.in_bag:
            instruction = m.message.data
        elif m.topic == contract.ACTION_CHUNK.in_bag:
            actions = np.array([list(p.positions) for p in m.message.points], np.float64)
            chunks.append((stamp, instruction, actions))
    for stamp, text, actions in chunks:
        frames = {c: images.get((c, stamp)) for c in cameras}
        earlier = [s for t, s in states if t <= stamp]
        if any(f is None for f in frames.values()) or not earlier:
            continue  # the observation behind this chunk was not recorded (best-effort camera topic)
        yield stamp, Observation(frames, earlier[-1], text), actions


def counterfactual(bag: str | Path, steered: SteeredPolicy, cameras: list[str], state_source: str = "libero",
                   gripper_joints: tuple[str, ...] = ("gripper_finger_left", "gripper_finger_right")) -> list[dict]:
    """One row per recorded action step: recorded and counterfactual action side by side."""
    dims = steered.policy.action_space.dims
    rows = []
    for stamp, observation, recorded in recorded_steps(bag, cameras, state_source, list(gripper_joints)):
        new = steered.act(observation).actions
        for i in range(min(len(recorded), len(new))):
            row = {"stamp_ns": stamp, "step_in_chunk": i}
            row.update({f"recorded_{d}": float(recorded[i, k]) for k, d in enumerate(dims)})
            row.update({f"counterfactual_{d}": float(new[i, k]) for k, d in enumerate(dims)})
            rows.append(row)
    if not rows:
        raise BagError(f"{bag} has no action chunk with its observation recorded")
    return rows


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The replay tools' policy options: which policy, its steering, and how observations were recorded."""
    parser.add_argument("--policy", default="demo")
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--dictionary", default="", help="default: the demo VLA's (other policies: none)")
    parser.add_argument("--strength", action="append", default=[], help="concept=value (repeatable); none = off")
    parser.add_argument("--cameras", nargs="+", default=["agentview", "wrist"])
    parser.add_argument("--state-source", default="libero", choices=("libero", "joints"))


def steered_from_arguments(args: argparse.Namespace) -> SteeredPolicy:
    """The policy of :func:`add_policy_arguments`, steered at the given strengths (others off)."""
    from vla_steering_node.node import default_dictionary

    policy = make_policy(args.policy, args.checkpoint)
    if not args.dictionary and args.policy != "demo":  # the default dictionary is the demo VLA's
        if args.strength:
            raise ValueError(f"--strength needs --dictionary for policy {args.policy!r}")
        return SteeredPolicy(policy)
    steered = steer_from_file(policy, args.dictionary or default_dictionary())
    strengths = {name: 0.0 for name in steered.engine.concepts}
    for item in args.strength:
        name, _, value = item.partition("=")
        strengths[name] = float(value)
    steered.engine.set_strengths(strengths)
    return steered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bag")
    add_policy_arguments(parser)
    parser.add_argument("--out", required=True, help="CSV to write")
    args = parser.parse_args(argv)
    try:
        rows = counterfactual(args.bag, steered_from_arguments(args), args.cameras, args.state_source)
    except (BagError, KeyError, ValueError, FileNotFoundError) as error:
        print(f"counterfactual replay failed: {error}", file=sys.stderr)
        return 1
    with open(args.out, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} action steps -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
