"""bag_player: replay a rosbag2 bag onto its topics with the original timing (no rosbag2 needed).

``python -m vla_steering_node.replay --ros-args -p bag:=DIR [-p rate:=2.0] [-p loop:=true]
[-p topics:=[/ee_pose,/action_chunk]] [-p publish_clock:=true] [-p wait_for_subscribers_s:=2.0]``

Messages are published as the recorded CDR bytes, each at ``start + (t - t0) / rate`` wall time;
with ``publish_clock`` the bag's time is published on ``/clock`` so nodes with ``use_sim_time``
see the recorded time. Topics keep their recorded names (QoS as the recorder used).
"""

from __future__ import annotations

import time
from pathlib import Path

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.time import Time
from rosbags.rosbag2 import Reader
from rosgraph_msgs.msg import Clock

from vla_steering import contract
from vla_steering.bags import BagError
from vla_steering_node import process
from vla_steering_node.conversions import message_class, qos_profile
from vla_steering_node.recorder import recorded_qos


class BagPlayer(Node):
    def __init__(self) -> None:
        super().__init__("bag_player")
        read_only = ParameterDescriptor(read_only=True)
        self.declare_parameter("bag", "", read_only)
        self.declare_parameter("rate", 1.0, read_only)
        self.declare_parameter("loop", False, read_only)
        self.declare_parameter("topics", [""], ParameterDescriptor(read_only=True,
                                                                    description="topics to play; empty = all"))
        self.declare_parameter("publish_clock", True, read_only)
        self.declare_parameter("wait_for_subscribers_s", 2.0, ParameterDescriptor(
            read_only=True, description="before playing, wait up to this long for every topic to have a subscriber"))
        self.path = Path(self.get_parameter("bag").value).expanduser()
        if not (self.path / "metadata.yaml").exists():
            raise BagError(f"{self.path} is not a rosbag2 bag (no metadata.yaml)")
        self.rate = float(self.get_parameter("rate").value)
        if not self.rate > 0:
            raise ValueError("rate must be > 0")
        wanted = {t for t in self.get_parameter("topics").value if t}
        with Reader(self.path) as reader:
            self.connections = [c for c in reader.connections if not wanted or c.topic in wanted]
        if not self.connections:
            raise BagError(f"none of the topics {sorted(wanted)} is in {self.path}")
        self.publishers_by_topic = {
            c.topic: self.create_publisher(message_class(c.msgtype), c.topic,
                                           recorded_qos(c.topic, c.msgtype))
            for c in self.connections if c.topic != contract.CLOCK.name}
        self.clock_pub = self.create_publisher(Clock, contract.CLOCK.name, qos_profile(contract.CLOCK)) \
            if self.get_parameter("publish_clock").value else None
        self.played = 0

    def play_once(self) -> None:
        with Reader(self.path) as reader:
            start, t0 = time.monotonic(), None
            for connection, timestamp, raw in reader.messages(connections=[
                    c for c in reader.connections if c.topic in self.publishers_by_topic]):
                t0 = timestamp if t0 is None else t0
                delay = start + (timestamp - t0) / 1e9 / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if not rclpy.ok():
                    return
                if self.clock_pub is not None:
                    self.clock_pub.publish(Clock(clock=Time(nanoseconds=timestamp).to_msg()))
                self.publishers_by_topic[connection.topic].publish(bytes(raw))
                self.played += 1

    def play(self) -> None:
        deadline = time.monotonic() + self.get_parameter("wait_for_subscribers_s").value
        while time.monotonic() < deadline and rclpy.ok() and not all(
                p.get_subscription_count() > 0 for p in self.publishers_by_topic.values()):
            time.sleep(0.05)
        self.play_once()
        while self.get_parameter("loop").value and rclpy.ok():
            self.play_once()
        self.get_logger().info(f"played {self.played} messages from {self.path}")


def main(args=None) -> None:
    process.run(BagPlayer, BagPlayer.play, (BagError, ValueError), "bag_player", args=args)


if __name__ == "__main__":
    main()
