"""pi0.5 / SmolVLA through LeRobot's PyTorch policies, from a local checkpoint directory.

LeRobot >= 0.5 needs Python >= 3.12; where it is not installed this backend says so
and nothing else in vla-steer is affected. Steering hooks attach to the policy's
``nn.Module`` (its PaliGemma / SmolVLM language layers and action expert are gated
MLP decoders, found like any other). Observation keys follow LeRobot's LIBERO
convention: ``observation.images.image``, ``observation.images.wrist_image``,
``observation.state``, ``task``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vla_steering.policies.base import LIBERO_EE_DELTA, Observation, Policy

LEROBOT_POLICIES = {"pi05": "lerobot.policies.pi05.modeling_pi05:PI05Policy",
                    "smolvla": "lerobot.policies.smolvla.modeling_smolvla:SmolVLAPolicy"}


class LeRobotPolicy(Policy):
    action_space = LIBERO_EE_DELTA

    def __init__(self, kind: str, checkpoint: str | Path, device: str = "cpu"):
        import importlib

        if kind not in LEROBOT_POLICIES:
            raise ValueError(f"unknown LeRobot policy {kind!r}; choose one of {', '.join(LEROBOT_POLICIES)}")
        module_name, class_name = LEROBOT_POLICIES[kind].split(":")
        try:
            policy_class = getattr(importlib.import_module(module_name), class_name)
        except ImportError as error:
            raise ImportError(f"the {kind} backend needs LeRobot (>= 0.5, Python >= 3.12): {error}") from error
        path = Path(checkpoint).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"LeRobot checkpoint {path} not found")
        self.model = policy_class.from_pretrained(str(path)).to(device).eval()
        self.device = device

    @torch.inference_mode()
    def predict(self, observation: Observation) -> np.ndarray:
        names = ("observation.images.image", "observation.images.wrist_image")
        batch = {name: torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(self.device)
                 for name, image in zip(names, observation.images.values())}
        batch["observation.state"] = torch.from_numpy(observation.state)[None].float().to(self.device)
        batch["task"] = [observation.instruction]
        self.model.reset()
        return self.model.predict_action_chunk(batch)[0, :, : self.action_space.dim].cpu().numpy()
