"""VLA policies behind one interface, and the factory that finds them by name.

``make_policy(name, checkpoint)`` imports a backend only when asked for, so a missing
optional dependency (LeRobot) affects only that backend, and tells "unknown name"
apart from "dependency missing".
"""

from __future__ import annotations

import importlib

from vla_steering.policies.base import (
    LIBERO_EE_DELTA,
    ActionChunk,
    ActionSpace,
    Observation,
    ObservationError,
    Policy,
    PolicyOutputError,
    SteeredPolicy,
)

POLICIES = {
    "demo": "vla_steering.policies.demo_vla:DemoVLAPolicy",
    "openvla": "vla_steering.policies.openvla:OpenVLAPolicy",
    "pi0": "vla_steering.policies.pi0:Pi0Policy",
    "pi05": "vla_steering.policies.lerobot:LeRobotPolicy",
    "smolvla": "vla_steering.policies.lerobot:LeRobotPolicy",
}
NEEDS_CHECKPOINT = ("openvla", "pi0", "pi05", "smolvla")


def make_policy(name: str, checkpoint: str = "", device: str = "cpu") -> Policy:
    """A policy by name: ``demo`` (built in) or a backend loading ``checkpoint`` (a local directory)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    if name in NEEDS_CHECKPOINT and not checkpoint:
        raise ValueError(f"policy {name!r} needs a checkpoint directory")
    module_name, class_name = POLICIES[name].split(":")
    policy_class = getattr(importlib.import_module(module_name), class_name)
    if name == "demo":
        return policy_class()
    if name in ("pi05", "smolvla"):
        return policy_class(name, checkpoint, device=device)
    return policy_class.from_pretrained(checkpoint, device=device)


__all__ = ["LIBERO_EE_DELTA", "ActionChunk", "ActionSpace", "Observation", "ObservationError", "Policy",
           "PolicyOutputError", "POLICIES", "SteeredPolicy", "make_policy"]
