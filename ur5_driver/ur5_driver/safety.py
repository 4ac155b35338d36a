"""Safety limits for commands to a UR arm, enforced in the driver whatever the policy sends.

A policy action (LIBERO-style end-effector delta, in [-1, 1] units) becomes a TCP target; every
servo tick :class:`SafetyFilter` turns "where the plan wants the TCP" into the next commanded
pose. It keeps the velocity it commanded last, and picks the next velocity within:

* the per-step translation / rotation caps and the TCP linear / angular speed;
* the TCP linear / angular **acceleration** against the last commanded velocity, so the
  commanded stream is continuous in position and velocity;
* the **workspace box**, met by braking: the speed towards each wall is limited so that the arm
  can stop before it (at a third of the acceleration per axis, so that braking at a corner is
  still within the limit); an arm already outside may only move back in;
* **reach, joint margins and singularities**, met by braking too: the filter tracks the joints
  of its commanded stream (one Newton step of IK per pose, so a tick's time is bounded: no
  iterative search), and both the candidate pose and the point where the arm would come to rest
  from it must keep every joint ``joint_margin`` from its limits and the Jacobian's smallest
  singular value above ``min_singular_value`` (the edge of the reach is the elbow singularity),
  or at least not make either worse. If not, the arm brakes as hard as the limits allow, and the
  reason is reported.

A stream starts from rest: after any halt, stop, refusal of the whole stream or reconnect the
caller calls :meth:`SafetyFilter.reset` and measures the next command from the arm's actual
pose. Every limit that shapes a command is reported; nothing beyond the limits is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ur5_driver.kinematics import JOINT_LIMITS, _jacobian, frames, rotation_matrix, rotation_vector

AXIS_SHARE = 1.0 / math.sqrt(3.0)  # per-axis share of the acceleration for braking at walls
MAX_STOPPING_JOINT_TRAVEL = 0.5  # rad: a stop needing more joint motion than this is at a singularity


class UnsafeCommand(ValueError):
    """A command that must not reach the robot at all (NaN, infinite, bad period)."""


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
    min_singular_value: float = 0.02  # of the 6x6 Jacobian; below it the arm is near a singularity

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
    rotation = rotation_matrix(tcp[3:])
    translation = action[:3] * translation_scale
    turn = rotation_matrix(action[3:6] * rotation_scale)
    if frame == "tool":
        translation = rotation @ translation
        new_rotation = rotation @ turn
    elif frame == "base":
        new_rotation = turn @ rotation
    else:
        raise ValueError(f"frame must be 'base' or 'tool', got {frame!r}")
    return np.concatenate([tcp[:3] + translation, rotation_vector(new_rotation)])


def braking_speed(distance: float, accel: float, dt: float) -> float:
    """The highest speed from which ticks of ``dt``, each slowing by ``accel * dt``, stop within ``distance``.

    Moving ``v dt`` this tick and then braking covers ``v dt + v^2 / (2 a) + v dt / 2``.
    """
    if distance <= 0:
        return 0.0
    return accel * (-1.5 * dt + math.sqrt(2.25 * dt * dt + 2.0 * distance / accel))


def _cap(vector: np.ndarray, limit: float) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector * (limit / norm) if norm > limit else vector


def _ball(vector: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return centre + _cap(vector - centre, radius)


@dataclass(frozen=True)
class Verdict:
    """Joints of a pose, how close they are to their limits and to a singularity."""

    joints: np.ndarray
    margin: float  # smallest distance of a joint to its limit (rad)
    singular: float  # smallest singular value of the Jacobian
    frames: np.ndarray  # the joints' frames (kinematics.frames), kept for the next IK step

    def problem(self, limits: SafetyLimits, than: Verdict | None = None) -> str | None:
        """Why the pose is not acceptable (unless no worse than ``than``, the present pose), or None."""
        if self.margin < limits.joint_margin and (than is None or self.margin < than.margin):
            return f"a joint {limits.joint_margin} rad from its limit"
        if self.singular < limits.min_singular_value and (than is None or self.singular < than.singular):
            return f"a singularity (Jacobian singular value {self.singular:.4f} < {limits.min_singular_value})"
        return None


def _verdict(joints: np.ndarray) -> Verdict:
    fs = frames(joints)
    return Verdict(joints, float(np.min(JOINT_LIMITS - np.abs(joints))),
                   float(np.linalg.svd(_jacobian(fs), compute_uv=False)[-1]), fs)


def _newton(start: Verdict, pose: np.ndarray) -> np.ndarray:
    """The joints for ``pose`` by one Newton (least-squares) step of IK from ``start``'s joints."""
    fs = start.frames
    end = fs[-1]
    error = np.concatenate([pose[:3] - end[:3, 3], rotation_vector(rotation_matrix(pose[3:]) @ end[:3, :3].T)])
    return start.joints + np.linalg.lstsq(_jacobian(fs), error, rcond=None)[0]


def _advance(pose: np.ndarray, velocity: np.ndarray, dt: float) -> np.ndarray:
    rotation = rotation_matrix(velocity[3:] * dt) @ rotation_matrix(pose[3:])
    return np.concatenate([pose[:3] + velocity[:3] * dt, rotation_vector(rotation)])


@dataclass
class SafetyFilter:
    limits: SafetyLimits
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(6))  # last commanded [v; w]
    here: Verdict | None = None  # the joints of the last commanded pose, their margin and singularity

    def reset(self) -> None:
        """A stream starts from rest: forget the last commanded velocity and joints."""
        self.velocity, self.here = np.zeros(6), None

    def _wall_limits(self, current: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """Per axis, the lowest and highest linear velocity from which the arm still stops before a wall."""
        lim = self.limits
        a_axis = lim.max_linear_accel * AXIS_SHARE
        bottom = -np.array([braking_speed(d, a_axis, dt) for d in current[:3] - np.asarray(lim.workspace_min)])
        top = np.array([braking_speed(d, a_axis, dt) for d in np.asarray(lim.workspace_max) - current[:3]])
        return bottom, top

    def _feasible(self, wanted: np.ndarray, current: np.ndarray, dt: float) -> np.ndarray:
        """The velocity closest to ``wanted`` within the acceleration, speed and wall limits."""
        lim = self.limits
        bottom, top = self._wall_limits(current, dt)
        linear_speed = min(lim.max_linear_speed, lim.max_step_translation / dt)
        v = wanted[:3].copy()
        for _ in range(20):  # alternating projections onto the convex limits
            v = np.clip(_cap(v, linear_speed), bottom, top)
            v = _ball(v, self.velocity[:3], lim.max_linear_accel * dt)
            if np.all(v <= top + 1e-12) and np.all(v >= bottom - 1e-12):
                break
        angular_speed = min(lim.max_angular_speed, lim.max_step_rotation / dt)
        w = _ball(_cap(wanted[3:], angular_speed), self.velocity[3:], lim.max_angular_accel * dt)
        return np.concatenate([v, w])

    def _binding(self, wanted: np.ndarray, current: np.ndarray, dt: float) -> str:
        """Which limits keep the filter from the wanted velocity (for the report)."""
        lim = self.limits
        reasons = []
        if np.linalg.norm(wanted[:3]) > min(lim.max_linear_speed, lim.max_step_translation / dt) or \
                np.linalg.norm(wanted[3:]) > min(lim.max_angular_speed, lim.max_step_rotation / dt):
            reasons.append("the speed or step limit")
        if np.linalg.norm(wanted[:3] - self.velocity[:3]) > lim.max_linear_accel * dt or \
                np.linalg.norm(wanted[3:] - self.velocity[3:]) > lim.max_angular_accel * dt:
            reasons.append("the acceleration limit")
        bottom, top = self._wall_limits(current, dt)
        if np.any(wanted[:3] > top) or np.any(wanted[:3] < bottom):
            reasons.append("braking for a workspace wall")
        return " and ".join(reasons) or "the limits together"

    def filter(self, current: np.ndarray, target: np.ndarray, q: np.ndarray, dt: float) -> tuple[np.ndarray, list]:
        """(safe TCP pose, reports) for one tick of ``dt`` from ``current`` toward ``target``.

        ``q``: the arm's measured joints (used when a stream starts, at the arm's actual pose).
        """
        lim = self.limits
        current, target = np.asarray(current, np.float64), np.asarray(target, np.float64)
        if not (np.all(np.isfinite(target)) and np.all(np.isfinite(current)) and dt > 0):
            raise UnsafeCommand(f"non-finite target {target.tolist()} or bad dt {dt}")
        reports: list[str] = []
        if self.here is None:
            self.here = _verdict(np.asarray(q, np.float64))
        step = target[:3] - current[:3]
        turn = rotation_vector(rotation_matrix(target[3:]) @ rotation_matrix(current[3:]).T)
        # the plan's velocity, slowed so that the arm can stop at the target
        wanted = np.concatenate([
            _cap(step / dt, braking_speed(float(np.linalg.norm(step)), lim.max_linear_accel, dt)),
            _cap(turn / dt, braking_speed(float(np.linalg.norm(turn)), lim.max_angular_accel, dt))])
        velocity = self._feasible(wanted, current, dt)
        if np.linalg.norm(velocity - wanted) > 1e-9:
            reports.append(f"velocity {np.round(wanted, 4).tolist()} limited to {np.round(velocity, 4).tolist()} "
                           f"by {self._binding(wanted, current, dt)}")
        pose, verdict, problem = self._check(current, velocity, dt)
        if problem is not None:
            reports.append(f"stopping before {problem}")
            velocity = self._feasible(np.zeros(6), current, dt)  # brake as hard as the limits allow
            pose = _advance(current, velocity, dt)
            verdict = _verdict(_newton(self.here, pose))
        boxed = np.clip(pose[:3], np.minimum(lim.workspace_min, current[:3]),
                        np.maximum(lim.workspace_max, current[:3]))
        if np.any(boxed != pose[:3]):  # braking should make this impossible; never move out regardless
            reports.append(f"position {np.round(pose[:3], 4).tolist()} clamped to the workspace box")
            pose = np.concatenate([boxed, pose[3:]])
        self.velocity = np.concatenate([(pose[:3] - current[:3]) / dt, velocity[3:]])
        self.here = verdict
        return pose, reports

    def _check(self, current: np.ndarray, velocity: np.ndarray, dt: float) -> tuple[np.ndarray, Verdict, str | None]:
        """The pose after one tick at ``velocity``, its verdict, and what is wrong with it or where it stops."""
        lim = self.limits
        pose = _advance(current, velocity, dt)
        verdict = _verdict(_newton(self.here, pose))
        problem = verdict.problem(lim, self.here)
        if problem is None and np.any(velocity != 0):  # where braking from here would bring the arm to rest
            speed, spin = np.linalg.norm(velocity[:3]), np.linalg.norm(velocity[3:])
            stopping = max(speed / lim.max_linear_accel, spin / lim.max_angular_accel) + dt
            ahead = np.concatenate([velocity[:3] * (speed / (2 * lim.max_linear_accel) + dt),
                                    velocity[3:] * (spin / (2 * lim.max_angular_accel) + dt)])
            joints = _newton(verdict, _advance(pose, ahead, 1.0))
            # a linearised step is blind across a singularity: also extrapolate how fast it is approached
            falling = max(0.0, self.here.singular - verdict.singular) / dt
            if np.max(np.abs(joints - verdict.joints)) > MAX_STOPPING_JOINT_TRAVEL or \
                    verdict.singular - falling * stopping < lim.min_singular_value < verdict.singular:
                problem = (f"a singularity (singular value {verdict.singular:.4f} falling "
                           f"{falling:.3f}/s, stopping takes {stopping:.3f} s)")
            else:
                problem = _verdict(joints).problem(lim, verdict)
        return pose, verdict, problem
