"""VLA policies behind one interface, and the factory that finds them by name.

``make_policy(name, checkpoint)`` imports a backend only when asked for (each pulls in its
own part of transformers), checks the options it is given against :data:`POLICY_OPTIONS`,
and tells "unknown name" apart from "unknown option".
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
    steer,
    steer_from_file,
)

POLICIES = {
    "demo": "vla_steering.policies.demo_vla:DemoVLAPolicy",
    "openvla": "vla_steering.policies.openvla:OpenVLAPolicy",
    "pi0": "vla_steering.policies.pi0:Pi0Policy",
    "pi05": "vla_steering.policies.pi05:Pi05Policy",
    "smolvla": "vla_steering.policies.smolvla:SmolVLAPolicy",
}
NEEDS_CHECKPOINT = ("openvla", "pi0", "pi05", "smolvla")
# what each backend's loader takes beyond the checkpoint and device, and each option's meaning
POLICY_OPTIONS: dict[str, dict[str, str]] = {
    "openvla": {"unnorm_key": "which dataset's action statistics (needed when the folder has several)",
                "center_crop_scale": "area kept by the evaluation center crop (1 = none; 0.9 for LIBERO fine-tunes)",
                "dtype": "bfloat16 (as published) or float32"},
    "pi0": {"seed": "seed of the flow-matching noise (every prediction)",
            "tokenizer": "local folder of the PaliGemma tokenizer (default: the local Hugging Face cache)",
            "asset_id": "openpi folders: which assets/<id>/norm_stats.json (needed when there are several)"},
    "pi05": {"seed": "seed of the flow-matching noise (every prediction)",
             "tokenizer": "local folder of the PaliGemma tokenizer (default: the local Hugging Face cache)",
             "asset_id": "openpi folders: which assets/<id>/norm_stats.json (needed when there are several)"},
    "smolvla": {"seed": "seed of the flow-matching noise (every prediction)",
                "vlm": "local folder of the SmolVLM2 backbone's config, processor and tokenizer "
                       "(default: the local Hugging Face cache, by the name config.json gives)"},
}


def make_policy(name: str, checkpoint: str = "", device: str = "cpu", **options) -> Policy:
    """A policy by name: ``demo`` (built in) or a backend loading ``checkpoint`` (a local directory).

    ``options`` are the backend's own (:data:`POLICY_OPTIONS`); one it does not take is an error.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    if name in NEEDS_CHECKPOINT and not checkpoint:
        raise ValueError(f"policy {name!r} needs a checkpoint directory")
    unknown = sorted(set(options) - set(POLICY_OPTIONS.get(name, {})))
    if unknown:
        raise ValueError(f"policy {name!r} takes no option {', '.join(unknown)}; its options: "
                         f"{sorted(POLICY_OPTIONS.get(name, {})) or 'none'}")
    module_name, class_name = POLICIES[name].split(":")
    policy_class = getattr(importlib.import_module(module_name), class_name)
    if name == "demo":
        return policy_class()
    return policy_class.from_pretrained(checkpoint, device=device, **options)


__all__ = ["LIBERO_EE_DELTA", "ActionChunk", "ActionSpace", "Observation", "ObservationError", "Policy",
           "PolicyOutputError", "POLICIES", "POLICY_OPTIONS", "SteeredPolicy", "make_policy", "steer",
           "steer_from_file"]
