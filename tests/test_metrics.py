"""Metrics on synthetic trajectories with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vla_steering.metrics import Episode, episode_metrics, gripper_events, mean_ci, paired_difference


def line(steps: int, velocity: tuple[float, float, float], start=(0.0, 0.0, 1.0), period=0.05) -> Episode:
    t = np.arange(steps + 1) * period
    pos = np.asarray(start) + np.outer(np.arange(steps + 1), velocity)
    return Episode(t, pos, np.zeros((steps, 7)), "timeout", steps)


def test_straight_line_up():
    m = episode_metrics(line(40, (0, 0, 0.01)), horizon_steps=20)
    assert m["displacement_z"] == pytest.approx(0.4) and m["displacement_x"] == 0
    assert m["path_length"] == pytest.approx(0.4) and m["speed_mean"] == pytest.approx(0.4 / 2.0)
    assert m["height_mean"] == pytest.approx(1.2) and m["height_max"] == pytest.approx(1.4)
    assert m["height_final"] == pytest.approx(1.4) and m["dz_per_step"] == pytest.approx(0.01)
    assert m["height_gain_20"] == pytest.approx(0.2) and m["path_length_20"] == pytest.approx(0.2)
    assert m["success"] is False and m["steps"] == 40


def test_fixed_horizon_is_independent_of_episode_length():
    short, long = line(20, (0.003, 0, 0.01)), line(200, (0.003, 0, 0.01))
    a, b = episode_metrics(short, horizon_steps=20), episode_metrics(long, horizon_steps=20)
    assert a["height_gain_20"] == pytest.approx(b["height_gain_20"])
    assert a["displacement_z"] != pytest.approx(b["displacement_z"])


def test_square_path_and_gripper():
    t = np.arange(5) * 0.05
    pos = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], float)
    actions = np.zeros((6, 7))
    actions[:, 6] = [-1, -1, 1, 1, -1, 0]
    m = episode_metrics(Episode(t, pos, actions, "success", 4))
    assert m["path_length"] == pytest.approx(4.0) and m["displacement_x"] == 0 and m["success"]
    assert m["speed_mean"] == pytest.approx(4.0 / 0.2)
    assert m["gripper_events"] == 2 == gripper_events(actions)


def test_statistics():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert math.isnan(mean_ci([])[0]) and math.isnan(mean_ci([1.0])[1])
    up = [episode_metrics(line(20, (0, 0, 0.01 * k))) for k in (1, 2, 3)]
    base = [episode_metrics(line(20, (0, 0, 0.0))) for _ in range(3)]
    diff, _ = paired_difference(up, base, "displacement_z")
    assert diff == pytest.approx(0.4)
    with pytest.raises(ValueError, match="pair"):
        paired_difference(up, base[:2], "displacement_z")


def test_empty_episode():
    m = episode_metrics(Episode(np.zeros(0), np.zeros((0, 3)), np.zeros((0, 7))))
    assert m == {"success": False, "outcome": "", "steps": 0}
