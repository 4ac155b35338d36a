"""The steering node's input buffer (no ROS): one inference per observation, instructions kept."""

from __future__ import annotations

import numpy as np

from vla_steering_node.observation_buffer import ObservationBuffer

IMAGE = np.zeros((16, 16, 3), np.uint8)


def filled(stamp: int = 100) -> ObservationBuffer:
    buffer = ObservationBuffer(["agentview"], stale_after_ns=10**9)
    buffer.put_instruction("move up")
    buffer.put_state(np.zeros(8, np.float32), stamp)
    buffer.put_image("agentview", IMAGE, stamp)
    return buffer


def test_a_re_sent_observation_does_not_make_the_buffer_fresh_again():
    buffer = filled()
    assert buffer.wait_fresh(0.0)
    _, stamp = buffer.take(100)
    buffer.put_image("agentview", IMAGE, stamp)  # the bridge sends it again while the policy works
    buffer.put_image("agentview", IMAGE, stamp)
    assert not buffer.wait_fresh(0.0) and buffer.repeats == 2 and buffer.dropped == 0
    buffer.put_image("agentview", IMAGE, stamp + 1)  # a new observation
    assert buffer.wait_fresh(0.0)


def test_a_duplicate_before_it_was_taken_is_not_a_drop():
    buffer = filled()
    buffer.put_image("agentview", IMAGE, 100)
    assert buffer.dropped == 0 and buffer.repeats == 1
    buffer.put_image("agentview", IMAGE, 101)
    assert buffer.dropped == 1


def test_an_empty_instruction_keeps_the_last_good_one():
    buffer = filled()
    assert not buffer.put_instruction("  ")
    observation, _ = buffer.take(100)
    assert observation.instruction == "move up"
