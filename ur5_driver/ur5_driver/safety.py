"""Safety limits for commands to a UR arm, enforced in the driver whatever the policy sends.

A policy action (LIBERO-style end-effector delta, in [-1, 1] units) becomes a TCP target; the
filter then refuses non-finite values and clamps, in order: the per-step translation / rotation
caps, the TCP linear / angular speed, the TCP linear / angular acceleration, the workspace box,
and the joint-limit margins (through IK). Every clamp is reported; nothing beyond the limits is
returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from ur5_driver.kinematics import JOINT_LIMITS, IKError, ik


class UnsafeCommand(ValueError):
    """A command that must not reach the robot at all (NaN, no IK solution near the arm)."""


@dataclass(frozen=True)
class SafetyLimits:
    """Units: metres, radians, seconds. Defaults are conservative for a UR5 on a table."""

    workspace_min: tuple[float, float, float] = (-0.70, -0.70, 0.05)  # base frame box (m)
    workspace_max: tuple[float, float, float] = (0.70, 0.70, 0.80)
    max_linear_speed: float = 0.10  # m/s
    max_angular_speed: float = 0.50  # rad/s
    max_linear_accel: float = 0.50  # m/s^2
    max_angular_accel: float = 2.0  # rad/s^2
    max_step_translation: float = 0.01  # m per policy step
    max_step_rotation: float = 0.05  # rad per policy step
    joint_margin: float = 0.10  # rad kept from each joint limit

    def __post_init__(self) -> None:
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ValueError(f"workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max}")
        positive = ("max_linear_speed", "max_angular_speed", "max_linear_accel", "max_angular_accel",
                    "max_step_translation", "max_step_rotation")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def delta_to_target(tcp: np.ndarray, action: np.ndarray, translation_scale: float, rotation_scale: float,
                    frame: str = "base") -> np.ndarray:
    """A LIBERO-style [dx dy dz droll dpitch dyaw] delta (units) -> TCP target pose.

    ``frame``: ``base`` applies the delta in the base frame; ``tool`` in the TCP's own frame.
    """
    action = np.asarray(action, np.float64)
    if action.shape[0] < 6 or not np.all(np.isfinite(action[:6])):
        raise UnsafeCommand(f"action {action.tolist()} is not a finite 6-D delta")
    rotation = Rotation.from_rotvec(tcp[3:])
    translation = action[:3] * translation_scale
    turn = Rotation.from_rotvec(action[3:6] * rotation_scale)
    if frame == "tool":
        translation = rotation.apply(translation)
        new_rotation = rotation * turn
    elif frame == "base":
        new_rotation = turn * rotation
    else:
        raise ValueError(f"frame must be 'base' or 'tool', got {frame!r}")
    return np.concatenate([tcp[:3] + translation, new_rotation.as_rotvec()])


@dataclass
class SafetyFilter:
    limits: SafetyLimits
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(6))  # last commanded [v; w]

    def reset(self) -> None:
        """Forget the last commanded velocity (after a stop or reconnect)."""
        self.velocity = np.zeros(6)

    def filter(self, current: np.ndarray, target: np.ndarray, q: np.ndarray, dt: float) -> tuple[np.ndarray, list]:
        """(safe TCP target, reports) for moving from ``current`` toward ``target`` within ``dt`` s."""
        lim = self.limits
        current, target = np.asarray(current, np.float64), np.asarray(target, np.float64)
        if not (np.all(np.isfinite(target)) and np.all(np.isfinite(current)) and dt > 0):
            raise UnsafeCommand(f"non-finite target {target.tolist()} or bad dt {dt}")
        reports = []
        step = target[:3] - current[:3]
        turn = (Rotation.from_rotvec(target[3:]) * Rotation.from_rotvec(current[3:]).inv()).as_rotvec()

        def cap(vector: np.ndarray, limit: float, what: str) -> np.ndarray:
            norm = np.linalg.norm(vector)
            if norm > limit:
                reports.append(f"{what} {norm:.4f} clamped to {limit:.4f}")
                return vector * (limit / norm)
            return vector

        step = cap(step, lim.max_step_translation, "step translation (m)")
        turn = cap(turn, lim.max_step_rotation, "step rotation (rad)")
        step = cap(step, lim.max_linear_speed * dt, "linear speed x dt (m)")
        turn = cap(turn, lim.max_angular_speed * dt, "angular speed x dt (rad)")
        linear_change = cap(step / dt - self.velocity[:3], lim.max_linear_accel * dt, "linear accel x dt (m/s)")
        angular_change = cap(turn / dt - self.velocity[3:], lim.max_angular_accel * dt, "angular accel x dt (rad/s)")
        step, turn = (self.velocity[:3] + linear_change) * dt, (self.velocity[3:] + angular_change) * dt
        # the accelerated step lies between the last one and the wanted one; cap again in case dt changed
        step = cap(step, min(lim.max_step_translation, lim.max_linear_speed * dt), "step translation (m)")
        turn = cap(turn, min(lim.max_step_rotation, lim.max_angular_speed * dt), "step rotation (rad)")
        position = current[:3] + step
        # never move further out of the box; an arm already outside may only move back in (no jump)
        low = np.minimum(lim.workspace_min, current[:3])
        high = np.maximum(lim.workspace_max, current[:3])
        boxed = np.clip(position, low, high)
        if np.any(boxed != position):
            reports.append(f"position {np.round(position, 4).tolist()} clamped to the workspace box")
        rotation = (Rotation.from_rotvec(turn) * Rotation.from_rotvec(current[3:])).as_rotvec()
        safe = np.concatenate([boxed, rotation])
        try:
            joints = ik(safe, q)
        except IKError as error:
            raise UnsafeCommand(f"target {np.round(safe, 4).tolist()} is not reachable near the arm: {error}") from None
        if np.any(np.abs(joints) > JOINT_LIMITS - lim.joint_margin):
            raise UnsafeCommand(f"target needs joints {np.round(joints, 3).tolist()} within {lim.joint_margin} rad "
                                "of their limits")
        self.velocity = np.concatenate([(boxed - current[:3]) / dt, turn / dt])
        return safe, reports
