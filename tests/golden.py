"""The golden reference sets: ../shared/golden's, and the ones this project made in the same format
(tests/golden_sets: openpi's PyTorch pi0 and pi0.5 layouts); checkpoint folders rebuilt from their salt, expected
arrays."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
PROJECT_GOLDEN = Path(__file__).resolve().parent / "golden_sets"
SALTS = {"openvla": "vla-steer-golden-A-openvla", "pi0": "vla-steer-golden-A-pi0", "pi05": "vla-steer-golden-A-pi05",
         "smolvla": "vla-steer-golden-A-smolvla", "openpi_pi0": "vla-steer-golden-openpi-pi0",
         "openpi_pi05": "vla-steer-golden-openpi-pi05"}


def golden_dir(family: str) -> Path:
    folder = PROJECT_GOLDEN / family if (PROJECT_GOLDEN / family).exists() else GOLDEN / family
    if not (folder / "keys.json").exists():
        pytest.skip(f"no golden set at {folder} (../shared beside the checkout)")
    return folder


def checkpoint(family: str) -> Path:
    """The family's published-layout folder with its weights, made once per machine by make_weights.py.

    Kept in the project cache (``$VLA_STEER_CACHE``), keyed by the set's keys.json and salt, since the
    script writes byte-identical files; a folder is used only once the script has finished writing it.
    """
    source = golden_dir(family)
    if not (GOLDEN / "make_weights.py").exists():
        pytest.skip("no ../shared/golden/make_weights.py beside the checkout")
    key = hashlib.sha256((source / "keys.json").read_bytes() + SALTS[family].encode()).hexdigest()[:16]
    cache = Path(os.environ.get("VLA_STEER_CACHE", Path.home() / ".cache" / "vla_steer"))
    out = cache / "golden" / f"{family}-{key}"
    done = out / ".complete"
    if not done.exists():
        subprocess.run([sys.executable, str(GOLDEN / "make_weights.py"), "--golden", str(source),
                        "--salt", SALTS[family], "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        done.write_text("written by make_weights.py\n")
    return out


def expected(family: str, name: str, subset: str = "expected") -> np.ndarray:
    return np.load(golden_dir(family) / subset / f"{name}.npy")


def max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def lerobot_observation(family: str, **replace):
    """The inputs of a LeRobot set (pi0, pi0.5, SmolVLA) as an Observation under LeRobot's camera names."""
    from PIL import Image

    from vla_steering.policies import Observation

    inputs = golden_dir(family) / "inputs"
    images = {name: np.asarray(Image.open(inputs / f"{file}.png").convert("RGB"))
              for name, file in (("image", "agentview"), ("wrist_image", "wrist"))}
    images.update(replace)
    return Observation(images, np.load(inputs / "state.npy"), (inputs / "instruction.txt").read_text())


def golden_noise(family: str):
    import torch

    return torch.from_numpy(np.load(golden_dir(family) / "inputs" / "noise.npy"))


def golden_concept(family: str, name: str, stacks: tuple[str, str]):
    """Hook ``name`` of the set's steering.json as a clamp concept on the native model's stacks ((VLM, expert))."""
    import json

    from vla_steering.dictionaries import Concept, InterventionDictionary

    spec = json.loads((golden_dir(family) / "steering.json").read_text())[name]
    layer = int(spec["module"].split(".layers.")[1].split(".")[0])
    stack = stacks[0] if name == "vlm" else stacks[1]
    return InterventionDictionary({name: Concept(name, tuple((layer, n) for n in spec["neurons"]),
                                                 strength=spec["value"], stack=stack)})


def denoise_steered(policy, observation, noise, dictionary=None):
    """``policy.denoise`` on ``observation`` with ``dictionary``'s concepts applied (None: unsteered), then unhooked."""
    from contextlib import nullcontext

    from vla_steering.policies import steer

    steered = steer(policy, dictionary) if dictionary is not None else None
    try:
        with steered.engine.applied() if steered is not None else nullcontext():
            return policy.denoise(policy.model_inputs(observation), noise)
    finally:
        if steered is not None:
            steered.engine.remove()
