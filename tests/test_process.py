"""The process shell every node shares: a failing callback is reported and the executor goes on."""

from __future__ import annotations

import os
import threading

import pytest
from ros_harness import unique_domain_id

os.environ.update(ROS_DOMAIN_ID=str(unique_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402

from vla_steering_node import process  # noqa: E402


class Flaky(Node):
    """A timer callback that raises on its first two calls, then counts."""

    def __init__(self):
        super().__init__("flaky_test_node")
        self.calls, self.done = 0, threading.Event()
        self.create_timer(0.01, self.on_timer)

    def on_timer(self):
        self.calls += 1
        if self.calls <= 2:
            raise RuntimeError(f"boom {self.calls}")
        if self.calls >= 5:
            self.done.set()


def test_a_callback_exception_is_reported_and_the_executor_keeps_serving():
    errors, served = [], []
    process.run(Flaky, lambda node: served.append(node.done.wait(10)), (), "flaky",
                on_error=lambda node, e: errors.append(str(e)))
    assert errors == ["boom 1", "boom 2"]  # both reported
    assert served == [True]  # and the executor ran the timer on to its fifth call
