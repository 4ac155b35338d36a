"""UR5 kinematics from the standard DH parameters: forward kinematics, Jacobian, numeric IK.

Poses are UR's ``[x, y, z, rx, ry, rz]``: position in metres in the base frame and orientation as
a rotation vector (axis × angle), as RTDE's ``actual_TCP_pose`` and ``servoL`` use them.
:func:`rotation_matrix` and :func:`rotation_vector` convert between the two forms (written out:
the servo loop calls them several times per tick, where scipy's ``Rotation`` costs ~50 µs a call).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.transform import Rotation

# UR5 (CB3 and e-Series share the arm's geometry) standard DH parameters, tool flange as TCP.
D = np.array([0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823])
A = np.array([0.0, -0.425, -0.39225, 0.0, 0.0, 0.0])
ALPHA = np.array([np.pi / 2, 0.0, 0.0, np.pi / 2, -np.pi / 2, 0.0])
JOINT_LIMITS = np.array([2 * np.pi, 2 * np.pi, np.pi, 2 * np.pi, 2 * np.pi, 2 * np.pi])  # ± rad


class IKError(RuntimeError):
    """No joint solution near the seed."""


CA, SA = np.cos(ALPHA), np.sin(ALPHA)


def frames(q: np.ndarray) -> np.ndarray:
    """The base frame and each joint's frame after it: (7, 4, 4) transforms."""
    ct, st = np.cos(q), np.sin(q)
    links = np.zeros((6, 4, 4))  # every joint's DH transform at once
    links[:, 0, 0], links[:, 0, 1], links[:, 0, 2], links[:, 0, 3] = ct, -st * CA, st * SA, A * ct
    links[:, 1, 0], links[:, 1, 1], links[:, 1, 2], links[:, 1, 3] = st, ct * CA, -ct * SA, A * st
    links[:, 2, 1], links[:, 2, 2], links[:, 2, 3], links[:, 3, 3] = SA, CA, D, 1.0
    out = np.empty((7, 4, 4))
    out[0] = np.eye(4)
    for i in range(6):
        np.matmul(out[i], links[i], out=out[i + 1])
    return out


def fk(q: np.ndarray) -> np.ndarray:
    """TCP pose [x, y, z, rx, ry, rz] for joint angles q (6,)."""
    t = frames(np.asarray(q, np.float64))[-1]
    return np.concatenate([t[:3, 3], rotation_vector(t[:3, :3])])


def jacobian(q: np.ndarray) -> np.ndarray:
    """(6, 6) geometric Jacobian: [linear velocity; angular velocity] of the TCP per joint velocity."""
    return _jacobian(frames(np.asarray(q, np.float64)))


def _jacobian(fs: np.ndarray) -> np.ndarray:
    z, r = fs[:6, :3, 2], fs[6, :3, 3] - fs[:6, :3, 3]  # each joint's axis, and the TCP from its origin
    j = np.empty((6, 6))
    j[0] = z[:, 1] * r[:, 2] - z[:, 2] * r[:, 1]  # z x r, written out (np.cross is slow)
    j[1] = z[:, 2] * r[:, 0] - z[:, 0] * r[:, 2]
    j[2] = z[:, 0] * r[:, 1] - z[:, 1] * r[:, 0]
    j[3:] = z.T
    return j


def rotation_matrix(rotvec: np.ndarray) -> np.ndarray:
    """The rotation matrix of a rotation vector (Rodrigues' formula, the exponential map)."""
    x, y, z = float(rotvec[0]), float(rotvec[1]), float(rotvec[2])
    angle = math.sqrt(x * x + y * y + z * z)
    if angle < 1e-9:  # second order: I + K + K^2 / 2
        return np.array([[1 - (y * y + z * z) / 2, -z + x * y / 2, y + x * z / 2],
                         [z + x * y / 2, 1 - (x * x + z * z) / 2, -x + y * z / 2],
                         [-y + x * z / 2, x + y * z / 2, 1 - (x * x + y * y) / 2]])
    x, y, z = x / angle, y / angle, z / angle
    c, s = math.cos(angle), math.sin(angle)
    t = 1.0 - c
    return np.array([[t * x * x + c, t * x * y - s * z, t * x * z + s * y],
                     [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
                     [t * x * z - s * y, t * y * z + s * x, t * z * z + c]])


def rotation_vector(matrix: np.ndarray) -> np.ndarray:
    """The rotation vector of a rotation matrix (the log map); scipy's slower path near pi."""
    m = matrix
    angle = math.acos(min(1.0, max(-1.0, (m[0, 0] + m[1, 1] + m[2, 2] - 1.0) / 2.0)))
    if angle > math.pi - 1e-3:
        return Rotation.from_matrix(matrix).as_rotvec()
    scale = 0.5 if angle < 1e-9 else angle / (2.0 * math.sin(angle))
    return np.array([(m[2, 1] - m[1, 2]) * scale, (m[0, 2] - m[2, 0]) * scale, (m[1, 0] - m[0, 1]) * scale])


def ik(target: np.ndarray, seed: np.ndarray, tolerance: float = 1e-7, iterations: int = 200,
       damping: float = 1e-3) -> np.ndarray:
    """Joint angles reaching ``target`` nearest the ``seed`` branch (damped least squares)."""
    q = np.asarray(seed, np.float64).copy()
    target = np.asarray(target, np.float64)
    target_rotation = rotation_matrix(target[3:])
    for _ in range(iterations):  # one forward pass per iteration gives both the error and the Jacobian
        fs = frames(q)
        end = fs[-1]
        error = np.concatenate([target[:3] - end[:3, 3],
                                rotation_vector(target_rotation @ end[:3, :3].T)])
        if np.linalg.norm(error) < tolerance:
            return q
        j = _jacobian(fs)
        q += j.T @ np.linalg.solve(j @ j.T + damping**2 * np.eye(6), error)
    raise IKError(f"no IK solution within {iterations} iterations (residual {np.linalg.norm(error):.2e})")
