"""The policy server: concurrent requests batched into one forward, each answered as its client's own policy
would, a bad request failing alone (the server's logic, driven here without Ray; on Ray in test_sweep)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from vla_steering.policies import ObservationError, make_policy, steer
from vla_steering.policies.base import Observation
from vla_steering.policies.demo_vla import render_scene
from vla_steering.policy_server import PolicyServer, PolicySpec
from vla_steering.steering import SteeringControls

DEMO_DICTIONARY = Path(__file__).resolve().parents[1] / "config" / "demo_vla_dictionary.yaml"


def scene(instruction: str, seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation({"agentview": render_scene(("left", "right")[seed % 2], "red", rng)},
                       np.zeros(8, np.float32), instruction)


@pytest.fixture(scope="module")
def server():
    return PolicyServer(PolicySpec("demo", dictionary=str(DEMO_DICTIONARY)), max_batch=3, wait_s=0.05)


def test_concurrent_requests_are_batched_and_each_answered_as_alone(server):
    controls = SteeringControls(server.describe()["dictionary"], server.describe()["max_abs_strength"])
    baseline, up = controls.state, controls.set_strength("up", 2.0)
    requests = [(scene("move left", 1), baseline), (scene("move left", 2), up), (scene("reach the block", 3), up),
                (scene("   ", 4), baseline), (scene("go down", 5), baseline)]

    async def clients():
        return await asyncio.gather(*(server.act(o, s, {"seed": 0}) for o, s in requests), return_exceptions=True)

    answers = asyncio.run(clients())
    assert server.stats() == {3: 1, 2: 1}  # 5 requests at once, at most 3 a batch
    assert isinstance(answers[3], ObservationError)  # the empty instruction fails its own request only
    local = steer(make_policy("demo"), server.steered.engine.dictionary, controls.max_abs_strength)
    try:
        for (observation, state), answer in zip(requests, answers, strict=True):
            if observation.instruction.strip():
                local.engine.update(strengths={"up": state.strengths.get("up", 0.0)})
                alone = local.act(observation)
                assert answer.steering == state and answer.steering.strengths == alone.steering.strengths
                np.testing.assert_allclose(answer.actions, alone.actions, atol=1e-4)  # a batch's own rounding
        assert answers[1].actions[0, 2] > answers[0].actions[0, 2] + 0.2  # 'up' steered its own rows only
    finally:
        local.engine.remove()


def test_a_state_the_served_dictionary_refuses_fails_its_request(server):
    state = SteeringControls(server.describe()["dictionary"], 100.0).set_strength("up", 50.0)  # over its 20

    async def client():
        return await server.act(scene("move up", 0), state, {})

    with pytest.raises(ValueError, match="outside"):
        asyncio.run(client())


def test_bad_batch_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        PolicyServer(PolicySpec("demo", dictionary=str(DEMO_DICTIONARY)), max_batch=0)
