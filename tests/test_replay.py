"""bag_player: a bag replayed onto its topics with its recorded timing."""

from __future__ import annotations

import os
import time

import pytest
from ros_harness import NodeProcess, unique_domain_id, wait_for

DOMAIN = unique_domain_id()
os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
rclpy = pytest.importorskip("rclpy")
from rclpy.serialization import serialize_message  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from vla_steering.bags import BagWriter  # noqa: E402


def make_bag(path):
    """20 action chunks 0.1 s apart, starting at t = 5 s, and an instruction."""
    writer = BagWriter(path, [("/action_chunk", "trajectory_msgs/msg/JointTrajectory"),
                              ("/instruction", "std_msgs/msg/String")])
    writer.write("/instruction", 5 * 10**9, serialize_message(String(data="lift it")))
    for i in range(20):
        msg = JointTrajectory(joint_names=["dx"])
        msg.header.stamp.sec = i
        writer.write("/action_chunk", 5 * 10**9 + i * 10**8, serialize_message(msg))
    writer.close()


@pytest.mark.parametrize("rate", [1.0, 2.0])
def test_replay_keeps_order_and_timing(tmp_path, rate):
    make_bag(tmp_path / "bag")
    rclpy.init()
    node = rclpy.create_node("replay_listener")
    arrivals = []
    node.create_subscription(JointTrajectory, "action_chunk",
                             lambda m: arrivals.append((m.header.stamp.sec, time.monotonic())), 100)
    player = NodeProcess("vla_steering_node.replay", DOMAIN, {"bag": str(tmp_path / "bag"), "rate": rate,
                                                              "topics": ["/action_chunk"],
                                                              "wait_for_subscribers_s": 20.0}, log=tmp_path / "p.log")
    try:
        assert wait_for(lambda: len(arrivals) == 20 or not player.alive(), 60,
                        lambda s: rclpy.spin_once(node, timeout_sec=s)), player.output()
    finally:
        player.stop()
        node.destroy_node()
        rclpy.shutdown()
    assert [sec for sec, _ in arrivals] == list(range(20))
    span = arrivals[-1][1] - arrivals[0][1]
    assert span == pytest.approx(1.9 / rate, abs=0.15)


def test_replay_refuses_a_missing_bag(tmp_path):
    player = NodeProcess("vla_steering_node.replay", DOMAIN, {"bag": str(tmp_path / "none")}, log=tmp_path / "p.log")
    player.process.wait(60)
    assert player.stop() == 1 and "not a rosbag2 bag" in player.output()
