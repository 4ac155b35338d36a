"""LIBERO without ROS: setup, upright images, action checks, success from LIBERO's own predicate."""

from __future__ import annotations

import numpy as np
import pytest

from sim_bridge.libero_env import MAX_STEPS, ActionError, LiberoEpisodes, check_action


def test_action_checks():
    np.testing.assert_array_equal(check_action([0.1] * 7)[0], [0.1] * 7)
    clipped, was_clipped = check_action([2, -3, 0, 0, 0, 0, 1])
    assert was_clipped and clipped.tolist() == [1, -1, 0, 0, 0, 0, 1]
    for bad in ([0.0] * 6, [np.nan] + [0.0] * 6, [np.inf] * 7, ["a"] * 7, None):
        with pytest.raises(ActionError):
            check_action(bad)


def upright(image: np.ndarray) -> bool:
    """Known scene property: the wooden table (reddish) is below the grey wall in an upright agent view."""
    redness = image[..., 0].astype(float) - image[..., 2].astype(float)
    quarter = len(image) // 4
    return redness[-quarter:].mean() > redness[:quarter].mean() + 10


@pytest.fixture(scope="module")
def spatial():
    episodes = LiberoEpisodes("libero_spatial", 0, image_size=128)
    yield episodes
    episodes.close()


def test_reset_images_and_state(spatial):
    obs = spatial.reset(3)
    assert spatial.instruction.startswith("pick up the black bowl")
    assert obs.agentview.shape == (128, 128, 3) and obs.agentview.dtype == np.uint8
    assert upright(obs.agentview) and not upright(obs.agentview[::-1, ::-1])
    assert obs.arm_joints.shape == (7,) and obs.gripper_joints.shape == (2,)
    assert spatial.steps == 0 and spatial.max_steps == MAX_STEPS["libero_spatial"] == 220
    assert abs(np.linalg.norm(obs.eef_quat_xyzw) - 1) < 1e-6


def test_motion_and_success_when_the_scene_reaches_the_goal(spatial):
    obs = spatial.reset(0)
    z0 = obs.eef_pos[2]
    for _ in range(5):
        obs, success = spatial.step(np.array([0, 0, 1.0, 0, 0, 0, -1]))
    assert obs.eef_pos[2] > z0 + 0.02 and not success and spatial.steps == 5
    assert abs(spatial.sim_time_s - 0.25) < 1e-9
    # put the bowl on the plate (the task's goal) and let physics settle
    sim = spatial.env.env.sim
    plate_pos = spatial.object_position("plate_1")
    qpos = sim.data.get_joint_qpos("akita_black_bowl_1_joint0").copy()
    qpos[:3] = plate_pos + np.array([0, 0, 0.03])
    sim.data.set_joint_qpos("akita_black_bowl_1_joint0", qpos)
    sim.forward()
    success = False
    for _ in range(20):
        _, success = spatial.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
        if success:
            break
    assert success


def test_unknown_suite_and_task():
    with pytest.raises(ValueError, match="unknown LIBERO suite"):
        LiberoEpisodes("libero_100", 0)
    with pytest.raises(ValueError, match="task_id 10 out of range"):
        LiberoEpisodes("libero_spatial", 10, image_size=64)
