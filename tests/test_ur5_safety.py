"""UR5 kinematics and the driver's safety filter (no robot, no ROS)."""

from __future__ import annotations

import numpy as np
import pytest

from ur5_driver.kinematics import IKError, fk, ik, jacobian
from ur5_driver.safety import SafetyFilter, SafetyLimits, UnsafeCommand, delta_to_target

HOME = np.array([0.0, -1.57, 1.57, -1.57, -1.57, 0.0])


def test_forward_kinematics_at_zero_is_the_known_ur5_pose():
    pose = fk(np.zeros(6))
    np.testing.assert_allclose(pose[:3], [-0.81725, -0.19145, -0.005491], atol=1e-6)


def test_jacobian_matches_finite_differences():
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = rng.uniform(-2, 2, 6)
        j = jacobian(q)
        eps = 1e-6
        for k in range(6):
            dq = np.zeros(6)
            dq[k] = eps
            np.testing.assert_allclose((fk(q + dq)[:3] - fk(q - dq)[:3]) / (2 * eps), j[:3, k], atol=1e-6)


def test_ik_round_trip_near_the_seed():
    rng = np.random.default_rng(1)
    for _ in range(10):
        q = HOME + rng.uniform(-0.4, 0.4, 6)
        solution = ik(fk(q), HOME + rng.uniform(-0.05, 0.05, 6) + (q - HOME))
        np.testing.assert_allclose(fk(solution), fk(q), atol=1e-6)
    with pytest.raises(IKError):
        ik(np.array([3.0, 0, 0, 0, 0, 0]), HOME)  # 3 m away: out of reach


def test_delta_actions_map_to_targets_in_either_frame():
    tcp = fk(HOME)
    up = delta_to_target(tcp, [0, 0, 1, 0, 0, 0, 1], 0.01, 0.05)
    np.testing.assert_allclose(up[:3] - tcp[:3], [0, 0, 0.01], atol=1e-12)
    tool = delta_to_target(tcp, [0, 0, 1, 0, 0, 0], 0.01, 0.05, frame="tool")
    assert np.linalg.norm(tool[:3] - tcp[:3]) == pytest.approx(0.01)
    with pytest.raises(UnsafeCommand):
        delta_to_target(tcp, [np.nan, 0, 0, 0, 0, 0], 0.01, 0.05)


def test_every_limit_holds_for_random_commands():
    limits = SafetyLimits()
    safety = SafetyFilter(limits)
    rng = np.random.default_rng(2)
    q = HOME.copy()
    current = fk(q)
    previous_velocity = np.zeros(6)
    dt = 0.008
    for _ in range(300):
        target = current + np.concatenate([rng.normal(0, 0.2, 3), rng.normal(0, 0.3, 3)])
        safe, _ = safety.filter(current, target, q, dt)
        step = safe[:3] - current[:3]
        velocity = step / dt
        assert np.linalg.norm(step) <= min(limits.max_step_translation, limits.max_linear_speed * dt) + 1e-12
        assert np.linalg.norm(velocity - previous_velocity[:3]) <= limits.max_linear_accel * dt + 1e-9
        assert np.all(safe[:3] >= np.array(limits.workspace_min) - 1e-12)
        assert np.all(safe[:3] <= np.array(limits.workspace_max) + 1e-12)
        q = ik(safe, q)
        current, previous_velocity = safe, np.concatenate([velocity, np.zeros(3)])


def test_refusals_and_reports():
    safety = SafetyFilter(SafetyLimits())
    current = fk(HOME)
    with pytest.raises(UnsafeCommand, match="non-finite"):
        safety.filter(current, np.full(6, np.nan), HOME, 0.008)
    far = current.copy()
    far[2] += 1.0
    _, reports = safety.filter(current, far, HOME, 0.008)
    assert any("the speed or step limit and the acceleration limit" in r for r in reports), reports
    with pytest.raises(ValueError, match="workspace_min"):
        SafetyLimits(workspace_min=(1, 0, 0), workspace_max=(0, 1, 1))


def test_an_arm_outside_the_box_may_only_move_back_in():
    limits = SafetyLimits(workspace_max=(0.70, 0.70, 0.30))
    safety = SafetyFilter(limits)
    current = fk(HOME)  # z ~ 0.35 (the flange above the box top at 0.30)
    assert current[2] > 0.30
    higher = current.copy()
    higher[2] += 0.005
    safe, reports = safety.filter(current, higher, HOME, 0.1)
    assert safe[2] == pytest.approx(current[2]) and reports  # not further out, and no jump into the box
    lower = current.copy()
    lower[2] -= 0.005
    safety.reset()
    safe, _ = safety.filter(current, lower, HOME, 0.1)
    assert safe[2] < current[2]


def test_rotation_vectors_and_matrices_convert_both_ways_at_every_angle():
    from scipy.spatial.transform import Rotation

    from ur5_driver.kinematics import rotation_matrix, rotation_vector

    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=3) * s for s in (1e-12, 1e-5, 0.1, 1.0, 2.5) for _ in range(20)]
    for v in vectors + [np.array([np.pi - 1e-4, 0.0, 0.0]), np.array([0.0, np.pi, 0.0])]:
        matrix = Rotation.from_rotvec(v).as_matrix()
        np.testing.assert_allclose(rotation_matrix(v), matrix, atol=1e-12)
        error = rotation_vector(matrix)
        assert np.allclose(Rotation.from_rotvec(error).as_matrix(), matrix, atol=1e-9)
        assert np.linalg.norm(error) <= np.pi + 1e-9
