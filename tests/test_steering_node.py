"""vla_steering_node as users run it: a separate process, talked to over real DDS with rclpy."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest
from ros_harness import NodeProcess, unique_domain_id, wait_for

DOMAIN = unique_domain_id()
os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import DescribeParameters, GetParameters, SetParameters  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from vla_steering.policies.demo_vla import render_scene  # noqa: E402
from vla_steering_node.conversions import rgb_to_image, trajectory_actions  # noqa: E402

NODE = "/vla_steering_node"


class Client:
    """The test's own node: plays the bridge (publishes observations) and the user (sets parameters)."""

    def __init__(self, namespace: str = ""):
        self.node = rclpy.create_node("test_client", namespace=namespace)
        node = f"/{namespace}{NODE}" if namespace else NODE
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.images = {c: self.node.create_publisher(Image, f"camera/{c}/image_raw", qos_profile_sensor_data)
                       for c in ("agentview", "wrist")}
        self.compressed = self.node.create_publisher(CompressedImage, "camera/agentview/image_raw/compressed",
                                                     qos_profile_sensor_data)
        self.joints = self.node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.instruction = self.node.create_publisher(String, "instruction", latched)
        self.actions: list[JointTrajectory] = []
        self.steering: list[DiagnosticArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(JointTrajectory, "action_chunk", self.actions.append, 10)
        self.node.create_subscription(DiagnosticArray, "steering_state", self.steering.append, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.set_client = self.node.create_client(SetParameters, f"{node}/set_parameters")
        self.get_client = self.node.create_client(GetParameters, f"{node}/get_parameters")
        self.describe_client = self.node.create_client(DescribeParameters, f"{node}/describe_parameters")
        self.scene = render_scene("left", "red", np.random.default_rng(0))

    def spin(self, seconds: float) -> None:
        rclpy.spin_once(self.node, timeout_sec=seconds)

    def stamp(self):
        return self.node.get_clock().now().to_msg()

    def publish_observation(self) -> object:
        """A valid observation, all stamped now; the primary (agentview) image last, as it triggers."""
        return self.republish(self.stamp())

    def republish(self, stamp) -> object:
        """The observation stamped ``stamp`` (again)."""
        joints = JointState(name=[f"j{i}" for i in range(7)], position=[0.1] * 7)
        joints.header.stamp = stamp
        self.joints.publish(joints)
        self.images["wrist"].publish(rgb_to_image(self.scene, stamp))
        self.images["agentview"].publish(rgb_to_image(self.scene, stamp))
        return stamp

    def act(self, timeout: float = 30.0) -> JointTrajectory:
        """Publish valid observations (again each second: sensor QoS is best effort) until one is answered."""
        stamps: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamps.append(self.publish_observation())
            if wait_for(lambda: any(a.header.stamp in stamps for a in self.actions), 1.0, self.spin):
                return next(a for a in self.actions if a.header.stamp in stamps)
        raise AssertionError("no action for a valid observation")

    def call(self, client, request, timeout: float = 10.0):
        assert client.wait_for_service(timeout_sec=timeout)
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=timeout)
        assert future.done()
        return future.result()

    def set(self, name: str, value) -> object:
        if isinstance(value, bool):
            v = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        elif isinstance(value, float):
            v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        elif isinstance(value, int):
            v = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        else:
            v = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        request = SetParameters.Request(parameters=[Parameter(name=name, value=v)])
        return self.call(self.set_client, request).results[0]

    def get(self, name: str) -> ParameterValue:
        return self.call(self.get_client, GetParameters.Request(names=[name])).values[0]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    rclpy.init()
    log = tmp_path_factory.mktemp("node") / "node.log"
    process = NodeProcess("vla_steering_node.node", DOMAIN, log=log)
    client = Client()
    client.instruction.publish(String(data="move left"))
    try:
        assert wait_for(lambda: client.set_client.service_is_ready() or not process.alive(), 120, client.spin)
        assert process.alive(), process.output()
        client.act(timeout=60)
        yield process, client
    finally:
        code = process.stop()
        client.node.destroy_node()
        rclpy.shutdown()
        assert code == 0, f"node exited with {code} on SIGINT:\n{process.output()[-3000:]}"


def dz(action: JointTrajectory) -> float:
    return float(trajectory_actions(action)[0, 2])


def test_action_chunk_contract(running):
    _, client = running
    action = client.act()
    assert action.header.frame_id == "ee_delta_7d"
    assert list(action.joint_names) == ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
    assert len(action.points) == 4
    assert [p.time_from_start.nanosec for p in action.points] == [50_000_000, 100_000_000, 150_000_000, 200_000_000]
    actions = trajectory_actions(action)
    assert np.all(np.isfinite(actions)) and np.all(np.abs(actions) <= 1.0)


def test_live_strength_applies_on_the_next_action(running):
    _, client = running
    before = client.act()
    result = client.set("steering.up.strength", 2.0)
    assert result.successful, result.reason
    after = client.act()
    try:
        assert dz(after) - dz(before) > 0.5
        assert wait_for(lambda: any(s.header.stamp == after.header.stamp for s in client.steering), 5, client.spin)
        state = next(s for s in client.steering if s.header.stamp == after.header.stamp).status[0]
        values = {kv.key: kv.value for kv in state.values}
        assert values["strength.up"] == "2.0" and values["enabled"] == "true"
        assert client.set("steering.enabled", False).successful
        assert abs(dz(client.act()) - dz(before)) < 1e-6  # disabled: back to the unsteered action
    finally:
        assert client.set("steering.enabled", True).successful
        assert client.set("steering.up.strength", 0.0).successful
    assert abs(dz(client.act()) - dz(before)) < 1e-6


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("steering.up.strength", 1000.0, "range"),
    ("steering.up.strength", "strong", "type"),
    ("steering.nope.strength", 1.0, "unknown parameter 'steering.nope.strength'"),
    ("steering.mode", "twist", "one of"),
    ("policy", "openvla", "read-only"),
    ("execute_steps", -3, ">= 0"),
])
def test_invalid_sets_are_refused_and_change_nothing(running, name, value, reason):
    _, client = running
    before = client.act()
    result = client.set(name, value)
    assert not result.successful and reason in result.reason.lower().replace("read only", "read-only"), result.reason
    assert client.get("steering.up.strength").double_value == 0.0
    assert client.get("steering.mode").string_value == "dictionary"
    assert abs(dz(client.act()) - dz(before)) < 1e-6


def test_a_batch_with_one_invalid_item_changes_nothing(running):
    from vla_steering_node.parameter_client import ParameterClient

    _, client = running
    before = client.get("steering.up.strength").double_value
    future = ParameterClient(client.node, NODE).set_async({"steering.up.strength": 3.0, "steering.nope.strength": 1.0})
    assert wait_for(future.done, 10, client.spin)
    assert not future.result().result.successful and "nope" in future.result().result.reason
    assert client.get("steering.up.strength").double_value == before


def test_strengths_are_described_with_a_range(running):
    _, client = running
    response = client.call(client.describe_client, DescribeParameters.Request(names=["steering.up.strength"]))
    descriptor = response.descriptors[0]
    assert descriptor.floating_point_range[0].from_value == -20.0
    assert descriptor.floating_point_range[0].to_value == 20.0
    assert "neurons" in descriptor.description


def no_action_within(client, seconds: float) -> bool:
    count = len(client.actions)
    wait_for(lambda: False, seconds, client.spin)
    return len(client.actions) == count


def bad_images(client):
    stamp = client.stamp()
    mono = rgb_to_image(client.scene, stamp)
    mono.encoding = "mono8"
    tiny = rgb_to_image(client.scene[:4, :4], stamp)
    truncated = rgb_to_image(client.scene, stamp)
    truncated.data = truncated.data[:100]
    padded = rgb_to_image(client.scene, stamp)  # more data than its header says
    padded.data = bytes(padded.data) + b"\0" * 300
    future = rgb_to_image(client.scene, stamp)
    future.header.stamp.sec += 86400  # a day ahead
    return [mono, tiny, truncated, padded, future]


def test_bad_inputs_publish_nothing_and_are_reported(running):
    process, client = running
    rejected = lambda: max([int({kv.key: kv.value for kv in d.status[0].values}.get("rejected_inputs", 0))  # noqa: E731
                            for d in client.diagnostics if d.status and "inference" in d.status[0].name] + [0])
    start = rejected()
    for image in bad_images(client):
        client.images["agentview"].publish(image)
        assert no_action_within(client, 0.7)
    client.joints.publish(JointState(name=[f"j{i}" for i in range(7)], position=[math.nan] + [0.0] * 6))
    stamp = client.stamp()
    client.images["agentview"].publish(rgb_to_image(client.scene, stamp))
    # the NaN state was refused, so the last good state (now stale) or none is used: no action from NaN
    wait_for(lambda: False, 0.7, client.spin)
    assert all(np.all(np.isfinite(trajectory_actions(a))) for a in client.actions)
    client.compressed.publish(CompressedImage(format="jpeg", data=b"not a jpeg"))
    many = JointState(name=[], position=[0.0] * 1000)
    many.header.stamp = client.stamp()
    client.joints.publish(many)
    assert wait_for(lambda: rejected() >= start + 8, 5, client.spin), client.diagnostics[-1]
    assert process.alive()
    client.act()


def diagnostic(client, key: str) -> int:
    return max([int({kv.key: kv.value for kv in d.status[0].values}.get(key, 0))
                for d in client.diagnostics if d.status and "inference" in d.status[0].name] + [0])


def test_an_empty_or_overlong_instruction_keeps_the_last_good_one(running):
    process, client = running
    start = diagnostic(client, "rejected_inputs")
    for text in ("   ", "move up " * 12_500):  # blank, and 100 kB
        client.instruction.publish(String(data=text))
        wait_for(lambda: False, 0.5, client.spin)
        client.act()  # still answered, with the last good instruction ("move left")
    assert wait_for(lambda: diagnostic(client, "rejected_inputs") >= start + 2, 5, client.spin)  # both refused
    assert process.alive()


def test_a_re_sent_observation_is_answered_once(running):
    """A bridge sends an unanswered observation again each second; a slow policy must not run twice on it."""
    _, client = running
    answered = client.act()
    stamp = answered.header.stamp
    for _ in range(3):  # the same observation again, as a bridge re-sends it
        client.images["agentview"].publish(rgb_to_image(client.scene, stamp))
        wait_for(lambda: False, 0.4, client.spin)
    assert sum(1 for a in client.actions if a.header.stamp == stamp) == 1
    assert wait_for(lambda: diagnostic(client, "repeated_observations") >= 1, 3, client.spin)
    client.act()  # a new observation is answered as usual


def test_reset_forgets_the_inputs_so_a_new_episode_is_answered_from_its_first_observation(running):
    """After ~/reset the instruction is forgotten (back to the empty parameter) until one arrives, and an
    observation stamped like one answered before is answered again (sim time starts again each episode)."""
    from std_srvs.srv import Trigger

    _, client = running
    reset = client.node.create_client(Trigger, "/vla_steering_node/reset")
    client.act()
    wait_for(lambda: False, 1.2, client.spin)  # the latest /diagnostics
    not_ready = diagnostic(client, "not_ready")
    assert client.call(reset, Trigger.Request()).success
    stamp = client.publish_observation()
    wait_for(lambda: False, 1.0, client.spin)
    assert not any(a.header.stamp == stamp for a in client.actions)  # no instruction yet
    assert wait_for(lambda: diagnostic(client, "not_ready") > not_ready, 3, client.spin)
    client.instruction.publish(String(data="move left"))
    answered = client.act()
    assert client.call(reset, Trigger.Request()).success
    client.instruction.publish(String(data="move left"))
    for _ in range(3):  # within stale_after_s of its stamp; sensor QoS is best effort: again until answered
        client.republish(answered.header.stamp)
        if wait_for(lambda: sum(a.header.stamp == answered.header.stamp for a in client.actions) == 2, 0.25,
                    client.spin):
            break
    assert sum(a.header.stamp == answered.header.stamp for a in client.actions) == 2


def test_the_noise_seed_is_live_and_checked(running):
    _, client = running
    assert client.set("seed", 11).successful and client.get("seed").integer_value == 11
    refused = client.set("seed", "eleven")
    assert not refused.successful and client.get("seed").integer_value == 11
    assert client.set("seed", 0).successful


def test_a_latched_instruction_is_state_not_a_stream(running):
    _, client = running
    wait_for(lambda: False, 2.5, client.spin)  # longer than stale_after_s since the instruction
    client.act()


def test_fuzz_thousand_malformed_messages(running):
    process, client = running
    rng = np.random.default_rng(42)
    for i in range(1000):
        kind = i % 4
        stamp = client.stamp()
        if kind == 0:
            msg = Image(height=int(rng.integers(0, 64)), width=int(rng.integers(0, 64)),
                        encoding=str(rng.choice(["rgb8", "bgr8", "mono8", "rgba8", "", "16UC1"])),
                        step=int(rng.integers(0, 200)), data=rng.integers(0, 255, int(rng.integers(0, 5000)),
                                                                           dtype=np.uint8).tobytes())
            msg.header.stamp = stamp
            client.images[str(rng.choice(["agentview", "wrist"]))].publish(msg)
        elif kind == 1:
            n = int(rng.integers(0, 10))
            values = rng.choice([0.0, 1.0, math.nan, math.inf, -math.inf, 1e308], n).tolist()
            client.joints.publish(JointState(name=[f"j{k}" for k in range(int(rng.integers(0, 10)))],
                                             position=values))
        elif kind == 2:
            client.compressed.publish(CompressedImage(format="png", data=rng.integers(0, 255, 64,
                                                                                      dtype=np.uint8).tobytes()))
        else:
            client.instruction.publish(String(data="".join(map(chr, rng.integers(1, 0x2FFF, 20)))))
        if i % 50 == 0:
            client.spin(0.01)
    wait_for(lambda: False, 1.0, client.spin)
    assert process.alive()
    assert all(np.all(np.isfinite(trajectory_actions(a))) and np.all(np.abs(trajectory_actions(a)) <= 1)
               for a in client.actions)
    client.instruction.publish(String(data="move left"))
    wait_for(lambda: False, 0.3, client.spin)
    client.act()


def test_a_parameter_flood_never_stalls_inference(running):
    """~45 sets a second (what a slider in a GUI sends) while observations keep coming: every
    observation is answered, every set is taken, and the last one is what the next action carries."""
    _, client = running

    def request(value: float):
        v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        return SetParameters.Request(parameters=[Parameter(name="steering.up.strength", value=v)])

    def value(index: int) -> float:
        return round(0.01 * (index % 100), 2)

    futures, answered = [], 0
    try:
        next_set, end = time.monotonic(), time.monotonic() + 6.0
        while time.monotonic() < end:
            stamp, resend = client.publish_observation(), time.monotonic() + 1.0
            deadline = time.monotonic() + 30.0
            while not any(a.header.stamp == stamp for a in client.actions):
                assert time.monotonic() < deadline, f"an observation went unanswered in the flood ({answered} were)"
                if time.monotonic() >= next_set:  # sets go out on their own schedule, answered or not
                    futures.append(client.set_client.call_async(request(value(len(futures)))))
                    next_set += 1 / 45
                if time.monotonic() >= resend:  # best-effort images: re-sent, as a bridge does
                    client.republish(stamp)
                    resend += 1.0
                client.spin(0.002)
            answered += 1
        assert wait_for(lambda: all(f.done() for f in futures), 30, client.spin)
        assert len(futures) >= 200 and all(f.result().results[0].successful for f in futures)
        assert answered >= 3
        last_value = value(len(futures) - 1)
        assert client.get("steering.up.strength").double_value == last_value
        last = client.act()
        assert wait_for(lambda: any(s.header.stamp == last.header.stamp for s in client.steering), 5, client.spin)
        state = next(s for s in client.steering if s.header.stamp == last.header.stamp).status[0]
        assert float({kv.key: kv.value for kv in state.values}["strength.up"]) == last_value
    finally:
        assert client.set("steering.up.strength", 0.0).successful


def test_a_policy_server_nothing_answers_for_stops_the_start_with_the_reason(tmp_path):
    """policy_server at a Ray address nothing listens on: a clear refusal in seconds, not ray.init's minutes."""
    node = NodeProcess("vla_steering_node.node", DOMAIN, {"policy_server": "policy", "ray_address": "127.0.0.1:9"},
                       log=tmp_path / "node.log")
    assert node.process.wait(60) == 1
    assert "cannot start: nothing answers at the Ray address '127.0.0.1:9'" in node.output(), node.output()
