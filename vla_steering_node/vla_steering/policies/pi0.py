"""pi0 through transformers' native ``PI0ForConditionalGeneration`` (flow matching).

The PaliGemma prefix runs once, then ``num_inference_steps`` denoising steps run the
action expert; the policy pins one steering plan for all of them, so concepts on
``model.vlm.language_model.layers.N`` (the prefix) and on the action expert
``model.dit.layers.N`` steer every step. The noise comes from a seeded generator,
so a prediction is reproducible. State is normalised and padded by the processor;
actions are un-normalised with the processor's ``actions_mean``/``actions_std`` when
it has them, and cut to the action space's 7 dimensions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vla_steering.policies.base import LIBERO_EE_DELTA, Observation, Policy


class Pi0Policy(Policy):
    action_space = LIBERO_EE_DELTA

    def __init__(self, model: nn.Module, processor, num_steps: int | None = None, seed: int = 0,
                 execute_steps: int | None = None):
        self.model = model.eval()
        self.processor = processor
        self.num_steps = num_steps
        self.seed = seed
        self.execute_steps = execute_steps  # None = the whole chunk

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, device: str = "cpu", **kwargs) -> Pi0Policy:
        from transformers import AutoProcessor, PI0ForConditionalGeneration

        path = Path(checkpoint).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"pi0 checkpoint {path} not found (a local directory with config.json)")
        model = PI0ForConditionalGeneration.from_pretrained(path, local_files_only=True).to(device)
        return cls(model, AutoProcessor.from_pretrained(path, local_files_only=True), **kwargs)

    @torch.inference_mode()
    def predict(self, observation: Observation) -> np.ndarray:
        from PIL import Image

        images = [Image.fromarray(image) for image in observation.images.values()]
        inputs = self.processor(images=[images], text=observation.instruction, state=observation.state[None],
                                return_tensors="pt")
        config = self.model.config
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(1, config.chunk_size, config.max_action_dim, generator=generator)
        actions = self.model.sample_actions(
            state=inputs["state"], input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
            attention_mask=inputs["attention_mask"], pixel_attention_mask=inputs["pixel_attention_mask"],
            noise=noise.to(inputs["pixel_values"].dtype), num_steps=self.num_steps,
        )[0, :, : self.action_space.dim]  # (chunk, 7)
        mean, std = getattr(self.processor, "actions_mean", None), getattr(self.processor, "actions_std", None)
        if mean is not None and std is not None:
            dim = self.action_space.dim
            actions = actions * torch.as_tensor(std[:dim]) + torch.as_tensor(mean[:dim])
        return actions[: self.execute_steps].float().numpy()
