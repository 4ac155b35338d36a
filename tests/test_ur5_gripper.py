"""Gripper mapping, gripper configuration, and the controller link's failure path (no robot needed)."""

from __future__ import annotations

import math
import time

import pytest

from ur5_driver.controller_link import ControllerLink, LinkDown
from ur5_driver.gripper import GripperConfig, gripper_command


def test_action_values_map_to_gripper_commands():
    assert [gripper_command("robotiq_socket", a) for a in (-1.0, 0.0, 1.0, 7.0)] == [0, 128, 255, 255]
    assert [gripper_command("digital_output", a) for a in (-1.0, -0.01, 0.0, 0.5)] == [0, 0, 0, 1]
    assert gripper_command("none", 1.0) is None
    assert gripper_command("robotiq_socket", math.nan) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"interface": "vacuum"}, "gripper must be one of"),
    ({"interface": "digital_output", "output_bank": "configurable"}, "standard or tool"),
    ({"interface": "digital_output", "output_bank": "tool", "output_pin": 2}, r"0\.\.1"),
])
def test_bad_gripper_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GripperConfig(**kwargs)


def test_a_controller_that_cannot_be_reached_is_a_clear_error():
    start = time.monotonic()
    with pytest.raises(LinkDown, match="connect: RuntimeError"):
        ControllerLink("127.0.0.2", control=True, gripper=GripperConfig())  # nothing listens
    assert time.monotonic() - start < 10.0
