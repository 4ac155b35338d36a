"""bag_recorder: records the topic contract into one rosbag2 MCAP bag (works without rosbag2).

Every message received is written as the CDR bytes DDS delivered (``raw`` subscriptions), with
the node clock's time (sim time under ``use_sim_time``). Counts per topic are in the bag's
metadata. SIGINT / SIGTERM close the bag, so it is always readable; an unwritable or full
output directory stops the node at start with the reason.
"""

from __future__ import annotations

import importlib
import time
from collections import Counter
from pathlib import Path

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from vla_steering.bags import BagError, BagWriter
from vla_steering_node import process

DEFAULT_TOPICS = [
    "camera/agentview/image_raw:sensor_msgs/msg/Image",
    "camera/wrist/image_raw:sensor_msgs/msg/Image",
    "joint_states:sensor_msgs/msg/JointState",
    "ee_pose:geometry_msgs/msg/PoseStamped",
    "instruction:std_msgs/msg/String",
    "action_chunk:trajectory_msgs/msg/JointTrajectory",
    "steering_state:diagnostic_msgs/msg/DiagnosticArray",
    "episode_events:diagnostic_msgs/msg/DiagnosticStatus",
    "/diagnostics:diagnostic_msgs/msg/DiagnosticArray",
]
BEST_EFFORT = ("sensor_msgs/msg/Image", "sensor_msgs/msg/JointState", "geometry_msgs/msg/PoseStamped")
LATCHED_TOPICS = ("instruction", "episode_events")


def message_class(msgtype: str):
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def qos_for(topic: str, msgtype: str) -> QoSProfile:
    if topic in LATCHED_TOPICS:
        return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
    reliability = ReliabilityPolicy.BEST_EFFORT if msgtype in BEST_EFFORT else ReliabilityPolicy.RELIABLE
    return QoSProfile(depth=200, reliability=reliability)


class BagRecorder(Node):
    def __init__(self) -> None:
        super().__init__("bag_recorder")
        read_only = ParameterDescriptor(read_only=True)
        self.declare_parameter("output_dir", "bags", read_only)
        self.declare_parameter("bag_name", "", ParameterDescriptor(
            read_only=True, description="bag directory name; default run_<wall time>"))
        self.declare_parameter("topics", DEFAULT_TOPICS, ParameterDescriptor(
            read_only=True, description="topic:package/msg/Type entries"))
        name = self.get_parameter("bag_name").value or time.strftime("run_%Y%m%d_%H%M%S")
        path = Path(self.get_parameter("output_dir").value).expanduser() / name
        topics = []
        for entry in self.get_parameter("topics").value:
            topic, _, msgtype = entry.rpartition(":")
            if not topic or msgtype.count("/") != 2:
                raise ValueError(f"topic entry {entry!r} is not topic:package/msg/Type")
            topics.append((self.resolve_topic_name(topic), msgtype))
        self.bag = BagWriter(path, topics)
        self.received: Counter[str] = Counter()
        for (topic, msgtype), entry in zip(topics, self.get_parameter("topics").value):
            relative = entry.rpartition(":")[0]
            self.create_subscription(message_class(msgtype), relative, lambda data, t=topic: self.on_message(t, data),
                                     qos_for(relative, msgtype), raw=True)
        self.get_logger().info(f"recording {len(topics)} topics into {path}")

    def on_message(self, topic: str, data: bytes) -> None:
        self.received[topic] += 1
        try:
            self.bag.write(topic, self.get_clock().now().nanoseconds, data)
        except (BagError, OSError) as error:  # e.g. the disk filled up: say so, keep what is written
            self.get_logger().error(f"could not write a {topic} message: {error}", throttle_duration_sec=2.0)


def idle(node: BagRecorder) -> None:
    while rclpy.ok():
        time.sleep(0.1)


def close_bag(node: BagRecorder) -> None:
    node.bag.close()
    counts = ", ".join(f"{t} {n}" for t, n in sorted(node.bag.counts.items()))
    lost = {t: n - node.bag.counts[t] for t, n in node.received.items() if n != node.bag.counts[t]}
    verdict = f"NOT WRITTEN: {lost}" if lost else "every received message written"
    print(f"[bag_recorder] closed {node.bag.path}: {counts or 'no messages'}; {verdict}", flush=True)


def main(args=None) -> None:
    process.run(BagRecorder, idle, (BagError, ValueError, ImportError, AttributeError), "bag_recorder",
                cleanup=close_bag, args=args)


if __name__ == "__main__":
    main()
