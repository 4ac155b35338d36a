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
    return _jacobian(frames(np.asarray(q, np.float64)))


def _jacobian(fs: list[np.ndarray]) -> np.ndarray:
    stacked = np.stack(fs[:-1])  # (6, 4, 4): each joint axis z and origin p, base frame
    z, r = stacked[:, :3, 2], fs[-1][:3, 3] - stacked[:, :3, 3]
    linear = np.stack([z[:, 1] * r[:, 2] - z[:, 2] * r[:, 1], z[:, 2] * r[:, 0] - z[:, 0] * r[:, 2],
                       z[:, 0] * r[:, 1] - z[:, 1] * r[:, 0]], axis=1)  # z x r, written out (np.cross is slow)
    return np.concatenate([linear, z], axis=1).T


def _rotation_error(matrix: np.ndarray) -> np.ndarray:
    """The rotation vector of a rotation matrix (the log map); scipy's slower path near pi."""
    angle = np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))
    if angle > np.pi - 1e-3:
        return Rotation.from_matrix(matrix).as_rotvec()
    skew = np.array([matrix[2, 1] - matrix[1, 2], matrix[0, 2] - matrix[2, 0], matrix[1, 0] - matrix[0, 1]])
    return skew * (0.5 if angle < 1e-9 else angle / (2.0 * np.sin(angle)))


def ik(target: np.ndarray, seed: np.ndarray, tolerance: float = 1e-7, iterations: int = 200,
       damping: float = 1e-3) -> np.ndarray:
    """Joint angles reaching ``target`` nearest the ``seed`` branch (damped least squares)."""
    q = np.asarray(seed, np.float64).copy()
    target = np.asarray(target, np.float64)
    target_rotation = Rotation.from_rotvec(target[3:]).as_matrix()
    for _ in range(iterations):  # one forward pass per iteration gives both the error and the Jacobian
        fs = frames(q)
        end = fs[-1]
        error = np.concatenate([target[:3] - end[:3, 3],
                                _rotation_error(target_rotation @ end[:3, :3].T)])
        if np.linalg.norm(error) < tolerance:
            return q
        j = _jacobian(fs)
        q += j.T @ np.linalg.solve(j @ j.T + damping**2 * np.eye(6), error)
    raise IKError(f"no IK solution within {iterations} iterations (residual {np.linalg.norm(error):.2e})")
