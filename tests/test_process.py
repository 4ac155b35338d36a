"""The process shell every node shares: a failing callback is reported and the executor goes on."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from ros_harness import unique_domain_id

os.environ.update(ROS_DOMAIN_ID=str(unique_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402

from vla_steering_node import process  # noqa: E402


class Flaky(Node):
    """A timer callback that raises (``error(text)``) on its calls ``failing``, and is done at call ``done_at``."""

    def __init__(self, name: str = "flaky_test_node", period: float = 0.01, failing: tuple = (1, 2),
                 done_at: int = 5, error: type = RuntimeError, text: str = "boom"):
        super().__init__(name)
        self.calls, self.done = 0, threading.Event()
        self.failing, self.done_at, self.error, self.text = failing, done_at, error, text
        self.create_timer(period, self.on_timer)

    def on_timer(self):
        self.calls += 1
        if self.calls in self.failing:
            raise self.error(f"{self.text} {self.calls}")
        if self.calls >= self.done_at:
            self.done.set()


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():  # process.run ignores signals once done (a node process then exits)
        signal.signal(sig, handler)


def test_a_callback_exception_is_reported_and_the_executor_keeps_serving():
    errors, served = [], []
    process.run(Flaky, lambda node: served.append(node.done.wait(10)), (), "flaky",
                on_error=lambda node, e: errors.append(str(e)))
    assert errors == ["boom 1", "boom 2"]  # both reported
    assert served == [True]  # and the executor ran the timer on to its fifth call


def late_flaky() -> Flaky:
    """Raises twice only once a listener has had time (2 s) to discover the node."""
    return Flaky("late_flaky_test_node", 0.1, (20, 21), 25, ValueError, "late boom")


def test_a_callback_exception_is_reported_on_diagnostics():
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    listener = rclpy.create_node("diagnostics_listener", context=context)
    heard = []
    listener.create_subscription(DiagnosticArray, "/diagnostics", lambda m: heard.extend(m.status), 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener)
    listening = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(0.05) for _ in iter(listening.is_set, True)],
                               daemon=True)
    spinner.start()
    try:
        process.run(late_flaky, lambda node: node.done.wait(20), (), "late_flaky")
    finally:
        listening.set()
        spinner.join(5)
        rclpy.shutdown(context=context)
    errors = [s for s in heard if s.name == "late_flaky_test_node: callback error"]
    assert [s.message for s in errors] == ["a callback failed and was skipped: ValueError: late boom 20",
                                           "a callback failed and was skipped: ValueError: late boom 21"]
    assert all(s.level == DiagnosticStatus.ERROR for s in errors)
    assert {kv.key: kv.value for kv in errors[-1].values}["callback_errors"] == "2"
