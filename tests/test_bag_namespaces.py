"""Bags of a namespaced run read like any other: topics relative to the run's namespace."""

from __future__ import annotations

import numpy as np
import pytest

from vla_steering.bags import TYPESTORE, BagError, BagWriter, read_bag
from vla_steering.metrics import episode_from_bag, episode_metrics

TYPES = {"ee_pose": "geometry_msgs/msg/PoseStamped", "action_chunk": "trajectory_msgs/msg/JointTrajectory",
         "episode_events": "diagnostic_msgs/msg/DiagnosticStatus"}
T = TYPESTORE.types


def header(nanosec: int = 0):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=nanosec), frame_id="")


def pose(nanosec: int, z: float):
    point = T["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=z)
    orientation = T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)
    return T["geometry_msgs/msg/PoseStamped"](header=header(nanosec),
                                              pose=T["geometry_msgs/msg/Pose"](position=point, orientation=orientation))


def chunk(rows):
    empty = np.zeros(0, np.float64)
    points = [T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(row, np.float64), velocities=empty, accelerations=empty, effort=empty,
        time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=50_000_000)) for row in rows]
    return T["trajectory_msgs/msg/JointTrajectory"](header=header(), joint_names=[], points=points)


def event(message: str, steps: int):
    return T["diagnostic_msgs/msg/DiagnosticStatus"](level=0, name="episode", message=message, hardware_id="",
                                                     values=[T["diagnostic_msgs/msg/KeyValue"](key="steps",
                                                                                              value=str(steps))])


def serialize(message, kind: str) -> bytes:
    return bytes(TYPESTORE.serialize_cdr(message, kind))


def record(path, namespace: str):
    writer = BagWriter(path, [(f"{namespace}/{t}", kind) for t, kind in TYPES.items()])
    for step in range(10):
        writer.write(f"{namespace}/ee_pose", step, serialize(pose(step * 50_000_000, 0.01 * step), TYPES["ee_pose"]))
        writer.write(f"{namespace}/action_chunk", step,
                     serialize(chunk([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0]]), TYPES["action_chunk"]))
    writer.write(f"{namespace}/episode_events", 10, serialize(event("timeout", 10), TYPES["episode_events"]))
    writer.close()
    return path


def test_a_namespaced_run_gives_the_same_metrics(tmp_path):
    plain = episode_from_bag(record(tmp_path / "plain", ""))
    spaced = episode_from_bag(record(tmp_path / "spaced", "/robot1"))
    assert len(spaced.actions) == 10 and spaced.outcome == "timeout" and len(spaced.times_s) == 10
    as_text = lambda metrics: {k: repr(v) for k, v in metrics.items()}  # noqa: E731 - NaN compares as text
    assert as_text(episode_metrics(spaced)) == as_text(episode_metrics(plain))


def test_a_bag_of_several_namespaces_must_name_one(tmp_path):
    bag = tmp_path / "both"
    writer = BagWriter(bag, [("/a/action_chunk", TYPES["action_chunk"]), ("/b/action_chunk", TYPES["action_chunk"])])
    for ns in ("/a", "/b"):
        writer.write(f"{ns}/action_chunk", 0 if ns == "/a" else 1, serialize(chunk([]), TYPES["action_chunk"]))
    writer.close()
    with pytest.raises(BagError, match="several namespaces"):
        list(read_bag(bag))
    assert [m.topic for m in read_bag(bag, namespace="b")] == ["/a/action_chunk", "/action_chunk"]


def test_a_message_that_does_not_decode_is_a_bag_error_naming_it(tmp_path):
    bag = tmp_path / "torn"
    writer = BagWriter(bag, [("/ee_pose", TYPES["ee_pose"])])
    writer.write("/ee_pose", 2 * 10**9, serialize(pose(0, 0.5), TYPES["ee_pose"])[:-20])  # cut short
    writer.close()
    with pytest.raises(BagError, match=r"geometry_msgs/msg/PoseStamped message on /ee_pose at 2.000 s cannot be"):
        list(read_bag(bag))
