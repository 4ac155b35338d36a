"""Policies: the contract, the factory, OpenVLA's action tokens, LIBERO adapters, the demo VLA."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_steering.dictionaries import load_dictionary
from vla_steering.policies import (
    LIBERO_EE_DELTA,
    Observation,
    ObservationError,
    Policy,
    PolicyOutputError,
    SteeredPolicy,
    make_policy,
)
from vla_steering.policies.libero import flip_upright, libero_state, quat_to_axis_angle, resize_image
from vla_steering.policies.openvla import ActionTokenizer, libero_gripper, unnormalize
from vla_steering.steering import SteeringEngine

DEMO_DICTIONARY = Path(__file__).resolve().parents[1] / "config" / "demo_vla_dictionary.yaml"
STATS = {"libero_spatial_no_noops": {"action": {"q01": [-0.5] * 6 + [0.0], "q99": [0.5] * 6 + [1.0],
                                                "mask": [True] * 6 + [False]}}}


def observation(instruction="pick up the bowl", size=64, state=None, seed=0):
    rng = np.random.default_rng(seed)
    images = {"agentview": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
              "wrist": rng.integers(0, 255, (size, size, 3), dtype=np.uint8)}
    return Observation(images, np.zeros(8, np.float32) if state is None else state, instruction)


# ---------------------------------------------------------------- the contract
def test_bad_observations_are_refused_before_the_policy_runs():
    class Never(Policy):
        action_space = LIBERO_EE_DELTA
        model = torch.nn.Identity()

        def predict(self, observation):
            raise AssertionError("must not be called")

    policy = SteeredPolicy(Never())
    good = observation()
    cases = [
        Observation({}, good.state, "x"),
        Observation({"a": good.images["agentview"].astype(np.float32)}, good.state, "x"),
        Observation({"a": good.images["agentview"][..., :2]}, good.state, "x"),
        Observation(good.images, np.array([0.0, math.nan]), "x"),
        Observation(good.images, np.array([math.inf]), "x"),
        Observation(good.images, good.state, "   "),
    ]
    for bad in cases:
        with pytest.raises(ObservationError):
            policy.act(bad)


def test_bad_policy_outputs_never_leave_the_policy():
    class Broken(Policy):
        action_space = LIBERO_EE_DELTA
        model = torch.nn.Identity()

        def __init__(self, out):
            self.out = out

        def predict(self, observation):
            return self.out

    for out in (np.full((2, 7), np.nan), np.zeros((2, 6)), np.zeros((0, 7)), np.zeros(7)):
        with pytest.raises(PolicyOutputError):
            SteeredPolicy(Broken(out)).act(observation())
    chunk = SteeredPolicy(Broken(np.zeros((3, 7)))).act(observation())
    assert chunk.actions.shape == (3, 7) and chunk.space.dims[-1] == "gripper" and chunk.steering is None


def test_actions_outside_the_action_space_are_clipped_and_counted():
    class Wild(Policy):
        action_space = LIBERO_EE_DELTA
        model = torch.nn.Identity()

        def predict(self, observation):
            return np.array([[0.5, 2.0, -3.0, 0, 0, 0, 1.0]])

    chunk = SteeredPolicy(Wild()).act(observation())
    np.testing.assert_array_equal(chunk.actions, [[0.5, 1.0, -1.0, 0, 0, 0, 1.0]])
    assert chunk.clipped == 2


def test_a_backend_must_declare_its_action_space():
    with pytest.raises(TypeError, match="ActionSpace"):
        class NoSpace(Policy):  # noqa: F841
            def predict(self, observation):
                return np.zeros((1, 7))


def test_factory_errors():
    with pytest.raises(ValueError, match="unknown policy 'gpt'.*demo, openvla, pi0"):
        make_policy("gpt")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        make_policy("openvla")
    with pytest.raises(FileNotFoundError, match="not found"):
        make_policy("pi0", "/no/such/checkpoint")
    with pytest.raises(FileNotFoundError, match="not found"):
        make_policy("openvla", "/no/such/checkpoint")
    with pytest.raises(ValueError, match="takes no option seed"):
        make_policy("demo", seed=1)
    with pytest.raises(ValueError, match=r"'openvla' takes no option tokenizer; its options: \['center_crop_scale'"):
        make_policy("openvla", "/some/checkpoint", tokenizer="x")
    for name in ("pi05", "smolvla"):
        with pytest.raises(FileNotFoundError, match="not found"):
            make_policy(name, "/no/such/checkpoint")


# ---------------------------------------------------------------- LIBERO adapters
def test_libero_state_and_images():
    half = math.sqrt(0.5)
    np.testing.assert_allclose(quat_to_axis_angle(np.array([0, 0, half, half])), [0, 0, math.pi / 2], atol=1e-9)
    np.testing.assert_allclose(quat_to_axis_angle(np.array([0, 0, 0, 1.0])), [0, 0, 0])
    state = libero_state(np.array([0.1, 0.2, 0.3]), np.array([half, 0, 0, half]), np.array([0.04, -0.04]))
    np.testing.assert_allclose(state, [0.1, 0.2, 0.3, math.pi / 2, 0, 0, 0.04, -0.04], atol=1e-6)
    image = np.zeros((4, 6, 3), np.uint8)
    image[0, 0] = 255  # top-left
    assert flip_upright(image)[-1, -1, 0] == 255
    big = np.full((256, 256, 3), 77, np.uint8)
    assert resize_image(big, 224).shape == (224, 224, 3) and resize_image(big, 224).mean() == 77


# ---------------------------------------------------------------- OpenVLA
def test_openvla_action_tokens_round_trip_and_unnormalise():
    tokens = ActionTokenizer(32000)
    actions = np.linspace(-0.99, 0.99, 21)
    decoded = tokens.decode(tokens.encode(actions))
    assert np.abs(decoded - actions).max() <= 1.0 / 255 + 1e-9
    # the action bins are the vocabulary's last 256 ids: -1 -> 31999, +1 -> 31744
    np.testing.assert_array_equal(tokens.encode(np.array([-1.0, 1.0])), [32000 - 1, 32000 - 256])
    stats = STATS["libero_spatial_no_noops"]["action"]
    out = unnormalize(np.array([-1.0, 0, 1, 0, 0, 0, 0.3]), stats)
    np.testing.assert_allclose(out, [-0.5, 0, 0.5, 0, 0, 0, 0.3])
    np.testing.assert_array_equal(libero_gripper(np.array([[0, 0, 0, 0, 0, 0, 0.9]]))[0, -1], -1.0)  # open
    np.testing.assert_array_equal(libero_gripper(np.array([[0, 0, 0, 0, 0, 0, 0.1]]))[0, -1], 1.0)  # close


# ---------------------------------------------------------------- demo VLA
@pytest.fixture(scope="module")
def demo():
    return make_policy("demo")


def mean_action(policy, instructions, seeds=range(3)):
    from vla_steering.policies.demo_vla import render_scene

    out = []
    for instruction in instructions:
        for seed in seeds:
            rng = np.random.default_rng(seed)
            side = ("left", "right")[seed % 2]
            obs = Observation({"agentview": render_scene(side, "red", rng)}, np.zeros(8, np.float32), instruction)
            out.append(policy.act(obs).actions)
    return np.concatenate(out).mean(0)


def test_demo_vla_follows_direction_words(demo):
    policy = SteeredPolicy(demo)
    assert mean_action(policy, ["move up", "go up"])[2] > 0.3
    assert mean_action(policy, ["move down", "lower the arm"])[2] < -0.2
    assert mean_action(policy, ["move forward"])[0] > 0.3
    chunk = policy.act(observation("move up"))
    assert chunk.actions.shape == (4, 7) and np.all(np.abs(chunk.actions) <= 1)


def test_demo_vla_up_concept_moves_the_arm_up_and_its_random_control_does_not(demo):
    dictionary = load_dictionary(DEMO_DICTIONARY, intermediate_size=1536)
    engine = SteeringEngine(demo.model, dictionary)
    policy = SteeredPolicy(demo, engine)
    instructions = ["move left", "move forward", "reach the block", "go down slowly"]
    try:
        base = mean_action(policy, instructions)
        engine.set_strength("up", 2.0)
        up = mean_action(policy, instructions)
        engine.set_strengths({"up": 0.0, "up_random": 2.0})
        random = mean_action(policy, instructions)
    finally:
        engine.remove()
    up_effect, random_effect = up[2] - base[2], random[2] - base[2]  # change in vertical motion
    assert up_effect > 0.5, (base, up)
    assert abs(random_effect) < 0.2 and up_effect > 4 * abs(random_effect), (base, random)


def test_demo_vla_training_is_deterministic():
    from vla_steering.policies.demo_vla import DemoVLAConfig, train_demo_vla

    config = DemoVLAConfig(scenes_per_instruction=1, vision_steps=3)
    a, b = train_demo_vla(config), train_demo_vla(config)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        if not name.startswith("backbone."):
            assert torch.equal(x, y), name


def test_demo_vla_rows_in_one_forward_equal_each_row_alone(demo):
    """What a policy server runs: several clients' observations, each with its own steering state, in one
    forward; each row's chunk is its observation's alone, and a bad observation fails its row only."""
    dictionary = load_dictionary(DEMO_DICTIONARY, intermediate_size=1536)
    engine = SteeringEngine(demo.model, dictionary)
    policy = SteeredPolicy(demo, engine)
    try:
        states = [engine.set_strength("up", 0.0), engine.set_strength("up", 2.0)]
        observations = [observation("move left", seed=1), observation("move left", seed=2),
                        observation("   "), observation("reach the block", seed=3)]
        rows = policy.act_rows(observations, [states[0], states[1], states[0], states[1]], [{"seed": 1}] * 4)
        assert isinstance(rows[2], ObservationError)
        for i in (0, 1, 3):
            engine.set_strength("up", rows[i].steering.strengths.get("up", 0.0))
            alone = policy.act(observations[i])
            assert rows[i].steering.strengths == alone.steering.strengths
            np.testing.assert_allclose(rows[i].actions, alone.actions, atol=1e-4)  # a batch's own rounding
        assert rows[1].actions[0, 2] > rows[0].actions[0, 2] + 0.2  # 'up' steers its own row only
    finally:
        engine.remove()
