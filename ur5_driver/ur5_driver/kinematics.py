"""UR5 kinematics from the standard DH parameters: forward kinematics, Jacobian, numeric IK.

Poses are UR's ``[x, y, z, rx, ry, rz]``: position in metres in the base frame and orientation as
a rotation vector (axis × angle), as RTDE's ``actual_TCP_pose`` and ``servoL`` use them.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

# UR5 (CB3 and e-Series share the arm's geometry) standard DH parameters, tool flange as TCP.
D = np.array([0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823])
A = np.array([0.0, -0.425, -0.39225, 0.0, 0.0, 0.0])
ALPHA = np.array([np.pi / 2, 0.0, 0.0, np.pi / 2, -np.pi / 2, 0.0])
JOINT_LIMITS = np.array([2 * np.pi, 2 * np.pi, np.pi, 2 * np.pi, 2 * np.pi, 2 * np.pi])  # ± rad


class IKError(RuntimeError):
    """No joint solution near the seed."""


def _dh(theta: float, d: float, a: float, alpha: float) -> np.ndarray:
    ct, st, ca, sa = np.cos(theta), np.sin(theta), np.cos(alpha), np.sin(alpha)
    return np.array([[ct, -st * ca, st * sa, a * ct], [st, ct * ca, -ct * sa, a * st], [0, sa, ca, d], [0, 0, 0, 1]])


def frames(q: np.ndarray) -> list[np.ndarray]:
    """The base frame and each joint's frame after it, as 4x4 transforms (7 of them)."""
    out = [np.eye(4)]
    for i in range(6):
        out.append(out[-1] @ _dh(q[i], D[i], A[i], ALPHA[i]))
    return out


def fk(q: np.ndarray) -> np.ndarray:
    """TCP pose [x, y, z, rx, ry, rz] for joint angles q (6,)."""
    t = frames(np.asarray(q, np.float64))[-1]
    return np.concatenate([t[:3, 3], Rotation.from_matrix(t[:3, :3]).as_rotvec()])


def jacobian(q: np.ndarray) -> np.ndarray:
    """(6, 6) geometric Jacobian: [linear velocity; angular velocity] of the TCP per joint velocity."""
    fs = frames(np.asarray(q, np.float64))
    p_end = fs[-1][:3, 3]
    columns = []
    for f in fs[:-1]:
        z, p = f[:3, 2], f[:3, 3]
        columns.append(np.concatenate([np.cross(z, p_end - p), z]))
    return np.array(columns).T


def pose_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """(6,) [position error; rotation error as a rotation vector, base frame]."""
    rotation = Rotation.from_rotvec(target[3:]) * Rotation.from_rotvec(current[3:]).inv()
    return np.concatenate([target[:3] - current[:3], rotation.as_rotvec()])


def ik(target: np.ndarray, seed: np.ndarray, tolerance: float = 1e-7, iterations: int = 200,
       damping: float = 1e-3) -> np.ndarray:
    """Joint angles reaching ``target`` nearest the ``seed`` branch (damped least squares)."""
    q = np.asarray(seed, np.float64).copy()
    target = np.asarray(target, np.float64)
    for _ in range(iterations):
        error = pose_error(target, fk(q))
        if np.linalg.norm(error) < tolerance:
            return q
        j = jacobian(q)
        q += j.T @ np.linalg.solve(j @ j.T + damping**2 * np.eye(6), error)
    raise IKError(f"no IK solution within {iterations} iterations (residual {np.linalg.norm(error):.2e})")
