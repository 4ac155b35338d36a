"""bag_recorder: what goes in comes out of the bag, in order; signals leave readable bags."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from ros_harness import NodeProcess, unique_domain_id, wait_for

DOMAIN = unique_domain_id()
os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from vla_steering.bags import bag_counts, read_bag  # noqa: E402
from vla_steering_node.conversions import rgb_to_image  # noqa: E402


@pytest.fixture()
def node():
    rclpy.init()
    node = rclpy.create_node("recorder_feeder")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def start(tmp_path, name="bag", **params):
    """The recorder writing into ``tmp_path``; ``bag_name`` ``name`` (None: not given)."""
    named = {"bag_name": name} if name is not None else {}
    return NodeProcess("vla_steering_node.recorder", DOMAIN, {"output_dir": str(tmp_path), **named, **params},
                       log=tmp_path / f"{name or 'recorder'}.log")


def spin(node, seconds):
    wait_for(lambda: False, seconds, lambda s: rclpy.spin_once(node, timeout_sec=s))


def action(i: int) -> JointTrajectory:
    msg = JointTrajectory(joint_names=["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"])
    msg.header.stamp.sec = i
    msg.points = [JointTrajectoryPoint(positions=[float(i)] * 7)]
    return msg


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_record_and_read_back(node, tmp_path, sig):
    process = start(tmp_path)
    actions = node.create_publisher(JointTrajectory, "action_chunk", QoSProfile(depth=200))
    events = node.create_publisher(DiagnosticStatus, "episode_events", QoSProfile(
        depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    images = node.create_publisher(Image, "camera/agentview/image_raw", QoSProfile(depth=50))
    assert wait_for(lambda: actions.get_subscription_count() > 0 and images.get_subscription_count() > 0
                    and events.get_subscription_count() > 0, 60), process.output()
    events.publish(DiagnosticStatus(name="episode", message="start"))
    frame = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for i in range(120):
        actions.publish(action(i))
        if i % 4 == 0:
            images.publish(rgb_to_image(frame, action(i).header.stamp))
            spin(node, 0.01)
    spin(node, 1.5)
    assert process.stop(sig=sig) == 0, process.output()
    bag = tmp_path / "bag"
    assert (bag / "metadata.yaml").exists() and list(bag.glob("*.mcap"))
    recorded = [m for m in read_bag(bag, ["/action_chunk"])]
    assert [m.message.header.stamp.sec for m in recorded] == list(range(120))  # all, in order
    assert recorded[7].message.points[0].positions.tolist() == [7.0] * 7
    frames = list(read_bag(bag, ["/camera/agentview/image_raw"]))  # best effort, like every camera topic
    assert len(frames) >= 20 and all(bytes(f.message.data) == frame.tobytes() for f in frames)
    assert bag_counts(bag)["/action_chunk"] == 120 and bag_counts(bag)["/episode_events"] == 1
    assert "every received message written" in process.output()


def test_unwritable_output_is_refused_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    process = NodeProcess("vla_steering_node.recorder", DOMAIN, {"output_dir": str(blocker / "bags")},
                          log=tmp_path / "r.log")
    process.process.wait(60)
    assert process.stop() == 1 and "cannot write bags" in process.output()


def test_one_bag_per_episode(node, tmp_path):
    from diagnostic_msgs.msg import KeyValue

    process = start(tmp_path, name="eval", split="episode")
    events = node.create_publisher(DiagnosticStatus, "episode_events", QoSProfile(
        depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    actions = node.create_publisher(JointTrajectory, "action_chunk", QoSProfile(depth=200))
    assert wait_for(lambda: actions.get_subscription_count() > 0 and events.get_subscription_count() > 0, 60)
    for episode in range(2):
        events.publish(DiagnosticStatus(name="episode", message="start", values=[
            KeyValue(key="suite", value="libero_10"), KeyValue(key="task_id", value="4"),
            KeyValue(key="init_state", value=str(episode))]))
        spin(node, 0.3)
        for i in range(5 + episode):
            actions.publish(action(i))
        spin(node, 0.3)
        events.publish(DiagnosticStatus(name="episode", message="timeout"))
        spin(node, 0.3)
    assert process.stop() == 0, process.output()
    bags = sorted(tmp_path.glob("eval_libero_10_t4_i*"))
    assert [b.name[:len("eval_libero_10_t4_i0")] for b in bags] == ["eval_libero_10_t4_i0", "eval_libero_10_t4_i1"]
    assert [bag_counts(b)["/action_chunk"] for b in bags] == [5, 6]
    assert [bag_counts(b)["/episode_events"] for b in bags] == [2, 2]
    assert "every received message written" in process.output()


def test_on_request_each_bag_is_the_one_bag_name_names(node, tmp_path):
    """split: request (what a rig kept across episodes uses): a bag_name set closes the current bag and opens
    that one; "" records nothing (counted, not silently dropped); a name that exists, or a path, is refused."""
    from vla_steering_node.parameter_client import ParameterClient

    process = start(tmp_path, name=None, split="request")
    actions = node.create_publisher(JointTrajectory, "action_chunk", QoSProfile(depth=200))
    assert wait_for(lambda: actions.get_subscription_count() > 0, 60), process.output()
    client = ParameterClient(node, "/bag_recorder")

    def set_name(name: str):
        future = client.set_async({"bag_name": name})
        assert wait_for(future.done, 30, lambda s: rclpy.spin_once(node, timeout_sec=s))
        return future.result().result

    def send(first: int, count: int) -> None:
        for i in range(first, first + count):
            actions.publish(action(i))
        spin(node, 0.5)

    send(0, 3)  # before any name: not recorded
    assert set_name("episode_a").successful
    send(3, 4)
    assert set_name("episode_b").successful
    assert (tmp_path / "episode_a" / "metadata.yaml").exists()  # closed by the set, before the next bag
    send(7, 2)
    assert set_name("").successful
    assert (tmp_path / "episode_b" / "metadata.yaml").exists()
    send(9, 1)
    refused = set_name("episode_a")
    assert not refused.successful and "exists already" in refused.reason
    assert not set_name("../elsewhere").successful
    assert process.stop() == 0, process.output()
    assert recorded_stamps(tmp_path / "episode_a") == [3, 4, 5, 6]
    assert recorded_stamps(tmp_path / "episode_b") == [7, 8]
    assert "received while no bag was named, not recorded: {'/action_chunk': 4}" in process.output()
    assert "NOT WRITTEN" not in process.output()


def test_on_request_a_bag_closed_mid_episode_waits_for_its_end_event(node, tmp_path):
    """A rig closes an episode's bag when it sees the end event itself, which may be before the recorder
    got it: the bag stays open until the end event is written, then closes; a bag without an episode
    in it closes at once."""
    from vla_steering_node.parameter_client import ParameterClient

    process = start(tmp_path, name=None, split="request")
    events = node.create_publisher(DiagnosticStatus, "episode_events", QoSProfile(
        depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    actions = node.create_publisher(JointTrajectory, "action_chunk", QoSProfile(depth=200))
    assert wait_for(lambda: actions.get_subscription_count() > 0 and events.get_subscription_count() > 0, 60)
    client = ParameterClient(node, "/bag_recorder")

    def set_name(name: str) -> None:
        future = client.set_async({"bag_name": name})
        assert wait_for(future.done, 30, lambda s: rclpy.spin_once(node, timeout_sec=s))
        assert future.result().result.successful

    set_name("episode")
    events.publish(DiagnosticStatus(name="episode", message="start"))
    actions.publish(action(0))
    spin(node, 0.5)
    set_name("")
    spin(node, 0.5)
    assert not (tmp_path / "episode" / "metadata.yaml").exists()  # its end event has not come yet
    actions.publish(action(1))
    events.publish(DiagnosticStatus(name="episode", message="timeout"))
    assert wait_for(lambda: (tmp_path / "episode" / "metadata.yaml").exists(), 30,
                    lambda s: rclpy.spin_once(node, timeout_sec=s)), process.output()
    set_name("no_episode")
    actions.publish(action(2))
    spin(node, 0.5)
    set_name("")
    assert (tmp_path / "no_episode" / "metadata.yaml").exists()
    assert process.stop() == 0, process.output()
    assert bag_counts(tmp_path / "episode")["/episode_events"] == 2
    assert recorded_stamps(tmp_path / "episode") == [0, 1] and recorded_stamps(tmp_path / "no_episode") == [2]


def publish_actions(node, process, count: int, pause_s: float = 0.0) -> None:
    actions = node.create_publisher(JointTrajectory, "action_chunk", QoSProfile(depth=200))
    assert wait_for(lambda: actions.get_subscription_count() > 0, 60), process.output()
    for i in range(count):
        actions.publish(action(i))
        spin(node, pause_s)
    spin(node, 1.5)


def recorded_stamps(bag) -> list[int]:
    return [m.message.header.stamp.sec for m in read_bag(bag, ["/action_chunk"])]


def test_a_second_sigint_waits_for_the_close(node, tmp_path):
    process = start(tmp_path)
    publish_actions(node, process, 200)
    while process.alive():  # Ctrl-C held down: signals all through the shutdown and the bag's close
        process.process.send_signal(signal.SIGINT)
        time.sleep(0.001)
    assert process.stop() == 0, process.output()
    assert recorded_stamps(tmp_path / "bag") == list(range(200)), process.output()
    assert "Traceback" not in process.output() and "KeyboardInterrupt" not in process.output()


def test_a_killed_recording_is_recovered_by_reindex(node, tmp_path):
    from vla_steering.cli import main as cli

    process = start(tmp_path)
    publish_actions(node, process, 150)
    assert process.stop(sig=signal.SIGKILL) == -signal.SIGKILL
    bag = tmp_path / "bag"
    assert not (bag / "metadata.yaml").exists()
    assert cli(["reindex", str(bag)]) == 0
    assert recorded_stamps(bag) == list(range(150))  # every message the recorder had written
    assert cli(["reindex", str(bag)]) == 0 and bag_counts(bag)["/action_chunk"] == 150  # a closed bag: unchanged


def test_a_full_disk_keeps_every_message_written_before_it(node, tmp_path):
    import resource

    from vla_steering.bags import reindex

    def small_disk():  # the recorder's files may not grow past 40 kB: writes then fail as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    process = NodeProcess("vla_steering_node.recorder", DOMAIN, {"output_dir": str(tmp_path), "bag_name": "bag"},
                          log=tmp_path / "bag.log", preexec_fn=small_disk)
    publish_actions(node, process, 300, pause_s=0.005)
    assert process.stop() == 0, process.output()
    output = process.output()
    assert "could not write" in output and "vla-steer reindex" in output, output
    stamps = list(reindex(tmp_path / "bag").values()) and recorded_stamps(tmp_path / "bag")
    assert 50 < len(stamps) < 300 and stamps == list(range(len(stamps)))  # a prefix, none torn, none lost
    assert f"/action_chunk {len(stamps)}" in output  # exactly what the recorder said it had written
