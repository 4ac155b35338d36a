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
