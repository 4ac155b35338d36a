"""The built-in demo VLA: a small vision encoder feeding the real SmolLM2-135M backbone.

Architecture (one forward per control step)::

    image (64x64) ─ CNN ─ projector ─► 2 visual tokens (the block's colour and side, as word embeddings)
    "The <colour> block is on the <side>. Task: {instruction}. The arm moves"
        ─► SmolLM2-135M (frozen, pretrained) ─► next-token logits of the motion words
           (' up', ' down', ' left', ' slowly', ...) ─ softmax ─ linear readout ─► 7-D action

Everything but the backbone is trained here, deterministically, in well under a minute
on 2 CPU cores, on data this module generates:

* the vision encoder learns to write, as its two tokens, the input embeddings of the
  words for what the image shows: the block's side (' left' / ' right') and colour
  (' red' / ' blue'); the backbone then reads the scene as words;
* the readout is a ridge regression from the backbone's next-word distribution over
  the motion words (read through its own LM head, as OpenVLA reads actions through
  action tokens) to the motion an instruction asks for: direction words ("lift it", "go down", "shift to the left",
  "reach the block" = towards the block in the image), speed words ("slowly",
  "carefully" 0.3; none 0.6; "quickly", "fast" 1.0) and the gripper (closed for
  grasping words, else open).

Because the action is decoded from the words the backbone is about to say, steering
the backbone's concept neurons (clamping 'up' neurons makes it say ' up') moves the arm:
language concepts drive motion. (A readout of the raw hidden state fits the training
motions better but reacts to random-neuron clamps as much as to concept clamps.)
The action space is LIBERO's: [dx, dy, dz, droll, dpitch, dyaw, gripper] in [-1, 1],
x forward, y left, z up. The demo ignores the robot state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from vla_steering.loading import cache_dir, load_language_model
from vla_steering.policies.base import LIBERO_EE_DELTA, PLACEHOLDER, Observation, Policy, instruction_span
from vla_steering.policies.libero import resize_image

DIRECTIONS = {
    "up": (("move up", "lift it", "raise the arm", "go up", "lift the block"), (0, 0, 1)),
    "down": (("move down", "lower it", "go down", "put it down", "lower the arm"), (0, 0, -1)),
    "left": (("move left", "go left", "shift to the left", "slide left"), (0, 1, 0)),
    "right": (("move right", "go right", "shift to the right", "slide right"), (0, -1, 0)),
    "forward": (("move forward", "push forward", "go forward"), (1, 0, 0)),
    "backward": (("move back", "pull back", "go backward"), (-1, 0, 0)),
}
REACH = ("reach the block", "go to the {color} block", "move toward the block")
SPEEDS = {"": 0.6, " slowly": 0.3, " carefully": 0.3, " quickly": 1.0, " fast": 1.0}
GRASP_WORDS = ("lift", "grasp", "grab", "pick", "hold")
SIDES = ("left", "right")
COLORS = {"red": (200, 40, 40), "blue": (40, 60, 200)}
MOTION_WORDS = (" up", " down", " left", " right", " forward", " back", " backward", " toward", " towards",
                " upward", " downward", " slowly", " quickly", " carefully", " fast", " slow", " gently")


@dataclass(frozen=True)
class DemoVLAConfig:
    """Everything that determines the demo VLA's weights (hashed into its cache name)."""

    backbone: str = "smollm2-135m"  # bundled model name (loading.BUNDLED_MODELS)
    image_size: int = 64  # the vision encoder's input, pixels
    chunk_size: int = 4  # actions per chunk
    scenes_per_instruction: int = 3  # training images per instruction
    vision_steps: int = 300  # Adam steps for the vision encoder
    ridge: float = 0.01  # readout L2 penalty
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def render_scene(side: str, color: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A table (grey, noisy) seen from above with one coloured block on the given side."""
    image = rng.normal(120, 12, (size, size, 3)).clip(0, 255)
    block = int(size * rng.uniform(0.15, 0.25))
    x0 = int(rng.uniform(0.05, 0.45 - block / size) * size) + (0 if side == "left" else size // 2)
    y0 = int(rng.uniform(0.1, 0.9 - block / size) * size)
    image[y0:y0 + block, x0:x0 + block] = np.asarray(COLORS[color]) + rng.normal(0, 8, (block, block, 3))
    return image.clip(0, 255).astype(np.uint8)


def training_instructions() -> list[tuple[str, str | None, float]]:
    """(instruction template, direction or None for "towards the block", speed) rows."""
    rows = []
    for name, (phrases, _) in DIRECTIONS.items():
        rows += [(phrase + suffix, name, speed) for phrase in phrases for suffix, speed in SPEEDS.items()]
    rows += [(phrase + suffix, None, speed) for phrase in REACH for suffix, speed in SPEEDS.items()]
    return rows


def target_action(instruction: str, direction: str | None, speed: float, block_side: str) -> np.ndarray:
    vector = np.asarray(DIRECTIONS[direction][1] if direction else (0, 1 if block_side == "left" else -1, 0), float)
    gripper = 1.0 if any(w in instruction for w in GRASP_WORDS) else -1.0
    return np.concatenate([speed * vector, np.zeros(3), [gripper]]).astype(np.float32)


class VisionEncoder(nn.Module):
    """(B, 3, S, S) in [0, 1] -> (B, tokens, D) visual tokens."""

    def __init__(self, hidden: int, tokens: int = 2):
        super().__init__()
        self.tokens = tokens
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.projector = nn.Linear(32 * 4 * 4, tokens * hidden)
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(pixels)).flatten(1)  # (B, 512)
        return self.projector(x).view(len(pixels), self.tokens, -1)  # (B, tokens, D)


def task_text(instruction: str) -> str:
    """The last part of the demo's prompt: the instruction, then the words the next one is read after."""
    return f". Task: {instruction.strip().rstrip('.')}. The arm moves"


class DemoVLA(nn.Module):
    """Vision encoder + SmolLM2 backbone + motion-word readout; forward = one inference."""

    def __init__(self, backbone: nn.Module, tokenizer, config: DemoVLAConfig):
        super().__init__()
        self.config = config
        self.backbone = backbone  # the CausalLM; steering hooks find its decoder layers
        self.tokenizer = tokenizer
        self.vision = VisionEncoder(backbone.config.hidden_size)
        ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in MOTION_WORDS]
        self.register_buffer("word_ids", torch.tensor(ids), persistent=False)
        self.readout = nn.Linear(len(MOTION_WORDS), LIBERO_EE_DELTA.dim)

    def get_output_embeddings(self) -> nn.Module:
        """The backbone's LM head: the demo's value vectors read through SmolLM2's vocabulary."""
        return self.backbone.get_output_embeddings()

    def _text(self, text: str) -> torch.Tensor:
        ids = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.backbone.get_input_embeddings()(ids)  # (n, D)

    def features(self, pixels: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """(B, len(MOTION_WORDS)): the backbone's next-word probabilities among the motion words."""
        visual = self.vision(pixels)  # (B, 2, D): side, colour
        sequences = [
            torch.cat([self._text("The"), v[1:2], self._text(" block is on the"), v[0:1],
                       self._text(task_text(t))])
            for v, t in zip(visual, instructions)
        ]
        length = max(len(s) for s in sequences)
        inputs = torch.zeros(len(sequences), length, visual.shape[-1])
        mask = torch.zeros(len(sequences), length, dtype=torch.long)
        for i, s in enumerate(sequences):  # left padding
            inputs[i, length - len(s):] = s
            mask[i, length - len(s):] = 1
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        hidden = self.backbone.model(inputs_embeds=inputs, attention_mask=mask,
                                     position_ids=positions).last_hidden_state[:, -1]  # (B, D)
        logits = hidden @ self.backbone.get_output_embeddings().weight[self.word_ids].T  # (B, W)
        return logits.softmax(-1)

    def forward(self, pixels: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """(B, 7) actions in [-1, 1]."""
        return self.readout(self.features(pixels, instructions)).clamp(-1.0, 1.0)


def to_pixels(images: list[np.ndarray], size: int) -> torch.Tensor:
    batch = np.stack([resize_image(image, size) for image in images])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)


def _word_embedding(model: nn.Module, tokenizer, word: str) -> torch.Tensor:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return model.get_input_embeddings().weight[ids].mean(0).detach()


def train_demo_vla(config: DemoVLAConfig = DemoVLAConfig(), progress: bool = False) -> DemoVLA:
    """Build and train the demo VLA (deterministic for a config)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    backbone, tokenizer = load_language_model(config.backbone)
    for p in backbone.parameters():
        p.requires_grad_(False)
    model = DemoVLA(backbone, tokenizer, config)

    # 1. vision encoder: image -> embeddings of the words for the block's side and colour
    words = {w: _word_embedding(backbone, tokenizer, " " + w) for w in (*SIDES, *COLORS)}
    optimizer = torch.optim.Adam(model.vision.parameters(), lr=3e-3)
    for _ in range(config.vision_steps):
        sides = rng.choice(SIDES, 32)
        colors = rng.choice(list(COLORS), 32)
        pixels = to_pixels([render_scene(s, c, rng, config.image_size) for s, c in zip(sides, colors)],
                           config.image_size)
        target = torch.stack([torch.stack([words[s], words[c]]) for s, c in zip(sides, colors)])
        loss = torch.nn.functional.mse_loss(model.vision(pixels), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    # 2. readout: ridge regression from the motion-word distribution to the commanded motion
    rows = training_instructions()
    instructions, images, targets = [], [], []
    for template, direction, speed in rows:
        for _ in range(config.scenes_per_instruction):
            side, color = rng.choice(SIDES), str(rng.choice(list(COLORS)))
            text = template.format(color=color)
            instructions.append(text)
            images.append(render_scene(side, color, rng, config.image_size))
            targets.append(target_action(text, direction, speed, side))
    with torch.inference_mode():
        hidden = torch.cat([model.features(to_pixels(images[i:i + 32], config.image_size), instructions[i:i + 32])
                            for i in range(0, len(images), 32)]).double()
    y = torch.from_numpy(np.stack(targets)).double()
    mean_h, mean_y = hidden.mean(0), y.mean(0)
    h = hidden - mean_h
    penalty = config.ridge * torch.eye(h.shape[1], dtype=torch.float64)
    weight = torch.linalg.solve(h.T @ h + penalty, h.T @ (y - mean_y))
    with torch.no_grad():
        model.readout.weight.copy_(weight.T.float())
        model.readout.bias.copy_((mean_y - mean_h @ weight).float())
    return model.eval()


def load_demo_vla(config: DemoVLAConfig = DemoVLAConfig()) -> DemoVLA:
    """The demo VLA, trained once per config and cached (only the small trained parts are saved)."""
    path = cache_dir() / "demo_vla" / f"{config.key()}.pt"
    if path.exists():
        backbone, tokenizer = load_language_model(config.backbone)
        model = DemoVLA(backbone, tokenizer, config)
        state = torch.load(path, weights_only=True)
        model.vision.load_state_dict(state["vision"])
        model.readout.load_state_dict(state["readout"])
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()
    model = train_demo_vla(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"vision": model.vision.state_dict(), "readout": model.readout.state_dict()}, partial)
    partial.rename(path)
    return model


class DemoVLAPolicy(Policy):
    """The demo VLA as a policy: first camera image + instruction -> a constant-velocity chunk."""

    action_space = LIBERO_EE_DELTA

    def __init__(self, config: DemoVLAConfig = DemoVLAConfig()):
        self.model = load_demo_vla(config)
        self.config = config

    batched = True

    def predict(self, observation: Observation) -> np.ndarray:
        return self.predict_batch([observation])[0]

    @torch.inference_mode()
    def predict_batch(self, observations: Sequence[Observation]) -> list[np.ndarray]:
        images = [next(iter(observation.images.values())) for observation in observations]
        actions = self.model(to_pixels(images, self.config.image_size), [o.instruction for o in observations])
        return [np.repeat(action.numpy()[None], self.config.chunk_size, axis=0) for action in actions]  # (T, 7)

    def instruction_positions(self, observation: Observation) -> slice:
        def ids(text: str) -> list[int]:
            return self.model.tokenizer(task_text(text), add_special_tokens=False)["input_ids"]

        return instruction_span(ids(observation.instruction), ids(PLACEHOLDER), tail=0)
