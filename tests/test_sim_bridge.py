"""sim_bridge over real DDS: lockstep on sim time, events, bad actions, and the steering node in the loop."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ros_harness import NodeProcess, start_spec, unique_domain_id, wait_for

DOMAIN = unique_domain_id()
os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_libero_env import upright  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from vla_steer_bringup import bringup  # noqa: E402
from vla_steering_node.conversions import image_to_rgb  # noqa: E402


class Watcher:
    def __init__(self, act=None):
        self.node = rclpy.create_node("sim_watcher")
        self.events: list[DiagnosticStatus] = []
        self.clock: list[float] = []
        self.images: list[Image] = []
        self.actions: list[JointTrajectory] = []
        events_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(DiagnosticStatus, "episode_events", self.events.append, events_qos)
        self.node.create_subscription(Clock, "/clock", lambda m: self.clock.append(
            m.clock.sec + m.clock.nanosec * 1e-9), 100)
        self.node.create_subscription(Image, "camera/agentview/image_raw", self.on_image, qos_profile_sensor_data)
        self.node.create_subscription(JointTrajectory, "action_chunk", self.actions.append, 10)
        self.diagnostics: list[DiagnosticStatus] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diagnostics.extend(m.status), 50)
        self.act = act
        self.action_pub = self.node.create_publisher(JointTrajectory, "action_chunk", 10)

    def on_image(self, msg: Image) -> None:
        self.images.append(msg)
        if self.act is not None:
            rows = self.act(len(self.images))
            reply = JointTrajectory(joint_names=[f"a{i}" for i in range(len(rows[0]) if rows else 0)])
            reply.header.stamp = msg.header.stamp
            reply.points = [JointTrajectoryPoint(positions=[float(v) for v in row]) for row in rows]
            self.action_pub.publish(reply)

    def spin(self, seconds: float) -> None:
        rclpy.spin_once(self.node, timeout_sec=seconds)

    def outcome(self) -> DiagnosticStatus | None:
        return next((e for e in self.events if e.message in ("success", "timeout")), None)


def values(event: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in event.values}


@pytest.fixture()
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def bridge(suite: str, task: int, steps: int, log, **extra) -> NodeProcess:
    params = {"suite": suite, "task_id": task, "episodes": 1, "max_steps": steps, "image_size": 128,
              "action_timeout_s": 60.0, **extra}
    return NodeProcess("sim_bridge.node", DOMAIN, params, log=log)


def test_lockstep_sim_time_and_bad_actions(ros, tmp_path):
    """The test plays the policy: good, out-of-range, NaN, wrong-length, empty and ragged chunks."""
    replies = {1: [[0, 0, 0.5, 0, 0, 0, -1]] * 2, 2: [[5, -5, 0, 0, 0, 0, 1]], 3: [[np.nan] * 7],
               4: [[0.1] * 5], 5: [], 6: [[0.0] * 7, [0.0] * 3]}
    watcher = Watcher(act=lambda n: replies.get(n, [[0, 0, 0, 0, 0, 0, -1]]))
    process = bridge("libero_spatial", 0, 7, tmp_path / "bridge.log")
    try:
        assert wait_for(lambda: watcher.outcome() is not None or not process.alive(), 240, watcher.spin), \
            process.output()[-3000:]
        wait_for(lambda: False, 0.3, watcher.spin)
        process.process.wait(60)  # one episode asked for: the bridge exits by itself
    finally:
        code = process.stop()
        watcher.node.destroy_node()
    assert code == 0, process.output()[-3000:]
    assert [e.message for e in watcher.events] == ["start", "timeout"]
    end = values(watcher.outcome())
    assert end["steps"] == "7" and end["no_op_steps"] == "0"
    assert end["clipped_actions"] == "1" and end["rejected_actions"] == "4"  # each refused one: a no-op step
    assert end["instruction"].startswith("pick up the black bowl")
    # sim time: one control period per executed action, from 0
    ticks = sorted(set(round(t, 3) for t in watcher.clock))
    assert ticks == [round(0.05 * i, 3) for i in range(8)]
    # an image for each replanning point: after the 2-step chunk, then after each 1-step chunk
    stamps = [round(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, 3) for m in watcher.images]
    assert stamps == [0.0, 0.1, 0.15, 0.2, 0.25, 0.3]
    assert all(upright(image_to_rgb(m)) for m in watcher.images)


@pytest.mark.parametrize(("suite", "task"), [("libero_spatial", 1), ("libero_10", 0)])
def test_steering_node_drives_the_simulation(ros, tmp_path, suite, task):
    watcher = Watcher()
    steering = start_spec(bringup.steering_node(use_sim_time=True, state_source="libero"), DOMAIN,
                          log=tmp_path / "steering.log")
    # the bridge re-sends an unanswered observation every 10 ms: the policy is slower than that
    process = bridge(suite, task, 8, tmp_path / "bridge.log", resend_s=0.01)
    try:
        assert wait_for(lambda: watcher.outcome() is not None or not process.alive(), 300, watcher.spin), \
            process.output()[-3000:] + steering.output()[-3000:]
        wait_for(lambda: False, 0.3, watcher.spin)
        process.process.wait(60)
    finally:
        bridge_code = process.stop()
        steering_code = steering.stop()
        watcher.node.destroy_node()
    assert bridge_code == 0 and steering_code == 0, process.output()[-2000:] + steering.output()[-2000:]
    end = values(watcher.outcome())
    assert watcher.outcome().message == "timeout" and end["steps"] == "8"
    assert end["no_op_steps"] == "0"  # every step was driven by the steering node's actions
    image_stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in watcher.images]
    answered = [(a.header.stamp.sec, a.header.stamp.nanosec) for a in watcher.actions]
    assert len(image_stamps) > len(set(image_stamps))  # observations were re-sent while the policy ran
    assert len(answered) == len(set(answered)) == 2  # 8 steps / 4-step chunks: exactly one chunk per stamp
    assert set(answered) <= set(image_stamps)
    bridge_status = [s for s in watcher.diagnostics if s.name == "sim_bridge: simulation"]
    assert bridge_status and values(bridge_status[-1])["no_op_steps"] == "0"


@pytest.mark.golden
@pytest.mark.parametrize(("family", "option", "folder"), [("pi05", "tokenizer", "paligemma_tokenizer_standin"),
                                                          ("smolvla", "vlm", "smolvlm2_standin")])
def test_a_flow_matching_backend_drives_a_libero_episode_steered(ros, tmp_path, family, option, folder):
    """The node loads the golden-size LeRobot folder, steers its action expert, and its chunks drive the episode."""
    import yaml
    from golden import checkpoint, golden_dir

    from vla_steering.dictionaries import Concept, InterventionDictionary, to_native

    concept = Concept("push", ((1, 2), (1, 20), (1, 41)), strength=0.0, stack="expert.layers")
    dictionary = tmp_path / "expert.yaml"
    dictionary.write_text(yaml.safe_dump(to_native(InterventionDictionary({"push": concept}))))
    watcher = Watcher()
    applied: list[str] = []
    watcher.node.create_subscription(DiagnosticArray, "steering_state",
                                     lambda m: applied.extend(s.message for s in m.status), 10)
    steering = start_spec(bringup.steering_node(
        use_sim_time=True, state_source="libero", policy=family, checkpoint=str(checkpoint(family)),
        execute_steps=3, **{option: str(golden_dir(family) / folder), "steering.dictionary": str(dictionary),
                            "steering.push.strength": 8.0}), DOMAIN, log=tmp_path / "steering.log")
    process = bridge("libero_spatial", 0, 6, tmp_path / "bridge.log")
    try:
        assert wait_for(lambda: watcher.outcome() is not None or not process.alive(), 400, watcher.spin), \
            process.output()[-3000:] + steering.output()[-3000:]
        wait_for(lambda: False, 0.3, watcher.spin)
        process.process.wait(60)
    finally:
        bridge_code = process.stop()
        steering_code = steering.stop()
        watcher.node.destroy_node()
    assert bridge_code == 0 and steering_code == 0, process.output()[-2000:] + steering.output()[-2000:]
    end = values(watcher.outcome())
    assert end["steps"] == "6" and end["no_op_steps"] == "0", steering.output()[-2000:]
    assert len(watcher.actions) == 2 and all(len(a.points) == 3 and len(a.points[0].positions) == 7
                                             for a in watcher.actions)
    assert watcher.actions[0].points[0].positions != watcher.actions[1].points[0].positions  # a new observation
    assert applied == ["push=8"] * 2  # each chunk computed with the concept applied


def test_services_choose_task_and_init_state_and_videos_are_written(ros, tmp_path):
    import cv2
    from std_srvs.srv import Trigger

    from vla_steering_node.parameter_client import ParameterClient

    watcher = Watcher(act=lambda n: [[0, 0, 0.3, 0, 0, 0, -1]])
    process = bridge("libero_spatial", 0, 200, tmp_path / "bridge.log", episodes=0, video_dir=str(tmp_path / "v"))

    def call(future):
        assert wait_for(future.done, 30, watcher.spin)
        return future.result()

    def starts():
        return [values(e) for e in watcher.events if e.message == "start"]

    try:
        assert wait_for(lambda: len(watcher.images) >= 3 or not process.alive(), 240, watcher.spin), \
            process.output()[-3000:]
        next_episode = watcher.node.create_client(Trigger, "/sim_bridge/next_episode")
        assert next_episode.wait_for_service(timeout_sec=10)
        assert call(next_episode.call_async(Trigger.Request())).success
        assert wait_for(lambda: len(starts()) == 2, 60, watcher.spin)
        assert starts()[1]["init_state"] == "1" and starts()[1]["task_id"] == "0"
        params = ParameterClient(watcher.node, "/sim_bridge")
        assert call(params.set_async({"task_id": 1, "init_state": 2})).result.successful
        reset = watcher.node.create_client(Trigger, "/sim_bridge/reset")
        assert call(reset.call_async(Trigger.Request())).success
        assert wait_for(lambda: len(starts()) == 3, 120, watcher.spin), process.output()[-3000:]
        assert starts()[2]["task_id"] == "1" and starts()[2]["init_state"] == "2"
        assert starts()[2]["instruction"] != starts()[0]["instruction"]
        assert call(params.set_async({"init_state": 99})).result.successful
        refused = call(reset.call_async(Trigger.Request()))
        assert not refused.success and "out of range" in refused.message
    finally:
        process.stop()
        watcher.node.destroy_node()
    assert [e.message for e in watcher.events][:5] == ["start", "interrupted", "start", "interrupted", "start"]
    videos = sorted((tmp_path / "v").glob("*.mp4"))
    assert [v.name for v in videos][:2] == ["libero_spatial_task0_init0.mp4", "libero_spatial_task0_init1.mp4"]
    frames = cv2.VideoCapture(str(videos[0])).get(cv2.CAP_PROP_FRAME_COUNT)
    assert frames >= 3


def test_without_autostart_it_runs_what_reset_asks_each_episode_seeded_afresh(ros, tmp_path):
    """autostart false (a rig kept across episodes): idle until ~/reset; each episode seeded afresh, so an
    episode run again after another one is the same, image for image."""
    from std_srvs.srv import Trigger

    from vla_steering_node.parameter_client import ParameterClient

    watcher = Watcher(act=lambda n: [[0.2, 0, 0.3, 0, 0, 0, -1]] * 2)
    process = bridge("libero_spatial", 0, 4, tmp_path / "bridge.log", episodes=0, autostart=False)

    def call(future):
        assert wait_for(future.done, 30, watcher.spin)
        return future.result()

    def ends() -> int:
        return sum(e.message in ("success", "timeout") for e in watcher.events)

    reset = watcher.node.create_client(Trigger, "/sim_bridge/reset")
    params = ParameterClient(watcher.node, "/sim_bridge")
    episodes = []
    try:
        assert wait_for(lambda: reset.service_is_ready() or not process.alive(), 240, watcher.spin), \
            process.output()[-3000:]
        wait_for(lambda: False, 2.0, watcher.spin)
        assert watcher.events == [] and watcher.images == []  # idle: nothing runs unasked
        for seed in (3, 5, 3):
            first, ended = len(watcher.images), ends()
            assert call(params.set_async({"seed": seed, "init_state": 1})).result.successful
            assert call(reset.call_async(Trigger.Request())).success
            assert wait_for(lambda ended=ended: ends() > ended or not process.alive(), 120, watcher.spin), \
                process.output()[-3000:]
            episodes.append({(m.header.stamp.sec, m.header.stamp.nanosec): bytes(m.data)  # re-sends once
                             for m in watcher.images[first:]})
        wait_for(lambda: False, 1.5, watcher.spin)
        assert sum(e.message == "start" for e in watcher.events) == 3  # and none after the last end
    finally:
        process.stop()
        watcher.node.destroy_node()
    starts = [values(e) for e in watcher.events if e.message == "start"]
    assert [(s["seed"], s["init_state"]) for s in starts] == [("3", "1"), ("5", "1"), ("3", "1")]
    assert len(episodes[0]) == 2 and episodes[0] == episodes[2]  # the same episode after another one
