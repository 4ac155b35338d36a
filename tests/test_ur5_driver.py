"""ur5_driver against the UR controller emulator, with the real ur_rtde client, over ROS."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import numpy as np
import pytest
from ros_harness import NodeProcess, unique_domain_id, wait_for

DOMAIN = unique_domain_id()
os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
rclpy = pytest.importorskip("rclpy")
pytest.importorskip("rtde_control")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from ur5_driver.emulator import HOME  # noqa: E402
from ur5_driver.kinematics import rotation_matrix, rotation_vector  # noqa: E402
from ur5_driver.safety import SafetyLimits  # noqa: E402

LIMITS = SafetyLimits()
SERVO_PERIOD = 1 / 125


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_emulator(log, tmp_path, e_series: bool = False) -> NodeProcess:
    process = NodeProcess("ur5_driver.emulator", DOMAIN, log=tmp_path / f"emulator{time.monotonic_ns()}.log",
                          ros_args=["--log", str(log)] + (["--e-series"] if e_series else []))
    assert wait_for(lambda: port_open(30004) and port_open(29999), 30)
    return process


def commands(log) -> list[dict]:
    """Every complete line the emulator has logged (the last one may still be being written)."""
    if not log.exists():
        return []
    lines = log.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines]


class Client:
    def __init__(self):
        self.node = rclpy.create_node("ur5_test_client")
        self.joints, self.poses, self.status = [], [], []
        self.node.create_subscription(JointState, "joint_states", self.joints.append, qos_profile_sensor_data)
        self.node.create_subscription(PoseStamped, "ee_pose", self.poses.append, qos_profile_sensor_data)
        self.node.create_subscription(DiagnosticStatus, "robot_status", self.status.append, 10)
        self.actions = self.node.create_publisher(JointTrajectory, "action_chunk", 10)

    def spin(self, seconds):
        rclpy.spin_once(self.node, timeout_sec=seconds)

    def wait(self, seconds):
        wait_for(lambda: False, seconds, self.spin)

    def send(self, rows, times_ns=None):
        """One chunk, a policy step every 50 ms unless ``times_ns`` (time_from_start per row) says otherwise."""
        msg = JointTrajectory(joint_names=["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"])
        msg.header.frame_id = "ee_delta_7d"
        for i, row in enumerate(rows):
            point = JointTrajectoryPoint(positions=[float(v) for v in row])
            step = (i + 1) * 50_000_000 if times_ns is None else times_ns[i]
            point.time_from_start.sec, point.time_from_start.nanosec = divmod(step, 1_000_000_000)
            msg.points.append(point)
        self.actions.publish(msg)

    def trigger(self, service: str):
        """Call a std_srvs/Trigger service of the driver; its response."""
        client = self.node.create_client(Trigger, f"/ur5_driver/{service}")
        assert client.wait_for_service(timeout_sec=10)
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done, 15, self.spin)
        return future.result()

    def latest(self):
        return {kv.key: kv.value for kv in self.status[-1].values} if self.status else {}


@pytest.fixture()
def rig(request, tmp_path):
    """Emulator, driver (extra parameters from an indirect parametrisation; ``e_series: True`` for a
    5.x controller and a 500 Hz servo loop), and a test client."""
    rclpy.init()
    log = tmp_path / "commands.jsonl"
    params = {"robot_ip": "127.0.0.1", "dry_run": False, **getattr(request, "param", {})}
    e_series = params.pop("e_series", False)
    if e_series:
        params["servo_rate_hz"] = 500.0
    emulator = start_emulator(log, tmp_path, e_series)
    driver = NodeProcess("ur5_driver.node", DOMAIN, params, log=tmp_path / "driver.log")
    client = Client()
    try:
        assert wait_for(lambda: len(client.joints) > 5 and client.status or not driver.alive(), 60, client.spin), \
            driver.output()[-3000:]
        yield emulator, driver, client, log
    finally:
        code = driver.stop()
        emulator.stop()
        client.node.destroy_node()
        rclpy.shutdown()
        assert code == 0, driver.output()[-3000:]


def check_limits(entries, period: float = SERVO_PERIOD):
    """Every servoL target inside the workspace; within one tick's step of where the arm was commanded
    just before (inside a servo stream) or of where it actually was (a stream's first); linear and
    angular speed within the limits; and, between consecutive commanded velocities of a stream,
    linear and angular acceleration within the limits. A stop, or a gap of several periods (a halt,
    idling), ends a stream."""
    arm = [e for e in entries if "doubles" in e]  # grippers and digital outputs do not move the arm
    for e in arm:
        assert all(np.isfinite(e["doubles"])), e
    limit = min(LIMITS.max_step_translation, LIMITS.max_linear_speed * period) + 1e-9
    servo, previous, velocity, last_t = [], None, None, None
    for e in arm:
        if e["command"] != "servoL" or (last_t is not None and e["t"] - last_t > 5 * period + 0.02):
            previous = velocity = None  # a stop or a halt ends the servo stream
        if e["command"] != "servoL":
            continue
        target = np.array(e["doubles"][:6])
        assert np.all(target[:3] >= np.array(LIMITS.workspace_min) - 1e-9), e
        assert np.all(target[:3] <= np.array(LIMITS.workspace_max) + 1e-9), e
        if previous is None:  # a stream's first target is measured from the arm's pose (1 mm tracking slack)
            assert np.linalg.norm(target[:3] - np.array(e["actual_tcp"][:3])) <= limit + 1e-3, e
        else:
            turn = rotation_vector(rotation_matrix(target[3:]) @ rotation_matrix(previous[3:]).T)
            step = np.concatenate([target[:3] - previous[:3], turn]) / period
            assert np.linalg.norm(step[:3]) * period <= limit, e
            assert np.linalg.norm(step[3:]) <= LIMITS.max_angular_speed + 1e-6, e
            if velocity is not None:  # the driver's commanded acceleration, tick to tick
                change = step - velocity
                assert np.linalg.norm(change[:3]) <= LIMITS.max_linear_accel * period + 1e-9, e
                assert np.linalg.norm(change[3:]) <= LIMITS.max_angular_accel * period + 1e-6, e
            velocity = step
        servo.append(e)
        previous, last_t = target, e["t"]
    return servo


@pytest.mark.parametrize("rig", [{}, {"e_series": True}], indirect=True, ids=["cb3", "e-series"])
def test_state_actions_limits_and_watchdog(rig, request):
    _, driver, client, log = rig
    period = 1 / 500 if request.node.callspec.params["rig"].get("e_series") else SERVO_PERIOD
    assert np.allclose(list(client.joints[-1].position), HOME, atol=1e-6)  # joint states track the emulator
    z0 = client.poses[-1].pose.position.z
    for _ in range(10):  # 'up' chunks, then silence
        client.send([[0, 0, 1, 0, 0, 0, -1]] * 4)
        client.wait(0.2)
    client.send([[0, 0, -1, 0, 0, 0, -1]] * 3, times_ns=[100_000_000, 50_000_000, 150_000_000])  # time runs back
    client.wait(1.1)  # refusals are logged once a second
    client.send([[np.nan] * 7] * 4)  # refused, never commanded
    client.send([[5, -5, 9, 0, 0, 0, 1]] * 4)  # out of range: clipped, then limited
    client.wait(1.0)
    assert client.poses[-1].pose.position.z > z0 + 0.02  # the emulated TCP went up
    assert wait_for(lambda: commands(log)[-1]["command"] == "servoStop", 5, client.spin), driver.output()[-3000:]
    entries = commands(log)
    servo = check_limits(entries, period)  # nothing beyond the limits reached the "robot"
    assert len(servo) > 100
    stops = [e for e in entries if e["command"] == "servoStop"]
    assert stops, "the watchdog never stopped the arm"
    silence = stops[-1]["t"] - servo[-1]["t"]
    assert 0 <= silence <= 2 * 0.05 + 0.05  # within two control periods (plus scheduling slack)
    assert wait_for(lambda: int(client.latest().get("refused", 0)) >= 2, 5, client.spin)  # the 1 Hz status
    assert "time_from_start must be finite" in driver.output() and "non-finite values" in driver.output()


def test_malformed_chunks_never_disable_the_driver(rig):
    _, driver, client, log = rig
    empty = JointTrajectory(joint_names=["dx"])
    client.actions.publish(empty)  # no points
    client.send([[0, 0, 1, 0, 0, 0, -1], [0, 0, 1]])  # ragged
    client.send([[0, 0, 1]] * 3)  # too narrow
    client.send([[0, 0, 1, 0, 0, 0, -1]] * 2, times_ns=[50_000_000, 3 * 86400 * 10**9])  # days ahead
    assert wait_for(lambda: int(client.latest().get("refused", 0)) >= 4, 5, client.spin)  # each one counted
    assert not [e for e in commands(log) if e["command"] == "servoL"] and driver.alive()
    z0 = client.poses[-1].pose.position.z
    for _ in range(5):  # the next good chunk moves the arm
        client.send([[0, 0, 1, 0, 0, 0, -1]] * 4)
        client.wait(0.2)
    assert client.poses[-1].pose.position.z > z0 + 0.01
    assert client.trigger("unlock_protective_stop").message  # the services still answer
    status_count = len(client.status)
    client.wait(1.5)
    assert len(client.status) > status_count  # and the 1 Hz status still comes
    output = driver.output()
    assert "lengths [3, 7]" in output and "expected 6 (7 with the gripper)" in output and "ahead" in output
    assert "Traceback" not in output


def dashboard(command: str) -> str:
    with socket.create_connection(("127.0.0.1", 29999), timeout=5) as s:
        reader = s.makefile("rb")
        reader.readline()  # greeting
        s.sendall(command.encode() + b"\n")
        return reader.readline().decode().strip()


def test_protective_stop_blocks_motion_until_unlocked(rig):
    _, _, client, log = rig
    raised = time.monotonic()
    log.with_suffix(".protective_stop").touch()
    assert wait_for(lambda: client.latest().get("protective_stop") == "True", 10, client.spin)
    assert time.monotonic() - raised < 0.5  # reported when it happens, not at the next 1 Hz status
    for _ in range(5):
        client.send([[0, 0, 1, 0, 0, 0, -1]] * 4)
        client.wait(0.2)
    assert not [e for e in commands(log) if e["command"] == "servoL" and e["protective_stop"]]
    assert client.trigger("unlock_protective_stop").success
    assert wait_for(lambda: client.latest().get("protective_stop") == "False", 10, client.spin)
    assert_moves_again(client, log)
    check_limits(commands(log))  # across the stop and the unlock


def assert_moves_again(client, log):
    """A chunk sent now is executed (sent again, up to 5 times, while the loaded machine is slow to resume)."""
    before = len(commands(log))
    for _ in range(5):
        client.send([[0, 0, 1, 0, 0, 0, -1]] * 4)
        client.wait(0.5)
        if len([e for e in commands(log)[before:] if e["command"] == "servoL"]) > 5:
            return
    raise AssertionError(f"no motion after the chunks: {commands(log)[before:][-5:]}")


def test_emergency_stop_is_reported_and_only_a_release_ends_it(rig):
    _, _, client, log = rig
    log.with_suffix(".emergency_stop").touch()
    assert wait_for(lambda: client.latest().get("emergency_stop") == "True", 10, client.spin)
    assert client.status[-1].level == DiagnosticStatus.ERROR
    client.trigger("unlock_protective_stop")  # the dashboard cannot unlock an emergency stop
    for _ in range(5):
        client.send([[0, 0, 1, 0, 0, 0, -1]] * 4)
        client.wait(0.2)
    assert client.latest()["emergency_stop"] == "True"
    assert not [e for e in commands(log) if e["command"] == "servoL" and e["emergency_stop"]]
    assert dashboard("emulator release emergency stop") == "Emergency stop released"  # the button, by hand
    assert wait_for(lambda: client.latest().get("emergency_stop") == "False", 10, client.spin)
    assert_moves_again(client, log)
    check_limits(commands(log))


def test_a_hung_driver_is_stopped_by_the_controller_and_resumes_only_when_asked(rig):
    _, driver, client, log = rig
    client.send([[0, 0, 1, 0, 0, 0, -1]] * 100)  # 5 s of motion
    assert wait_for(lambda: len([e for e in commands(log) if e["command"] == "servoL"]) > 20, 5, client.spin)
    driver.process.send_signal(signal.SIGSTOP)  # the driver hangs mid-motion
    try:
        assert wait_for(lambda: any(e["command"] == "watchdog_expired" for e in commands(log)), 5)
    finally:
        driver.process.send_signal(signal.SIGCONT)
    entries = commands(log)
    expired = next(i for i, e in enumerate(entries) if e["command"] == "watchdog_expired")
    last = max(e["t"] for e in entries[:expired] if "doubles" in e)
    assert 0.2 <= entries[expired]["t"] - last <= 0.25 + 0.15  # controller_watchdog_s after the last input
    assert wait_for(lambda: client.latest().get("program_running") == "False", 10, client.spin)
    client.wait(0.3)  # poses from before the hang may still be on their way
    held = client.poses[-1].pose.position.z
    client.wait(1.0)  # the driver runs again; the old plan and new actions alike must not move the arm
    client.send([[0, 0, 1, 0, 0, 0, -1]] * 4)
    client.wait(0.5)
    assert abs(client.poses[-1].pose.position.z - held) < 1e-9
    # at most the one command the driver had in hand when it hung (its state read came before the
    # hang); once it has read that the program stopped, it sends nothing
    assert len([e for e in commands(log)[expired:] if e["command"] == "servoL"]) <= 1
    assert int(client.latest()["program_stops"]) >= 1
    resumed = client.trigger("resume_control")
    assert resumed.success, resumed.message
    assert wait_for(lambda: client.latest().get("program_running") == "True", 10, client.spin)
    z0 = client.poses[-1].pose.position.z
    for _ in range(5):
        client.send([[0, 0, 1, 0, 0, 0, -1]] * 4)
        client.wait(0.2)
    assert client.poses[-1].pose.position.z > z0 + 0.01
    assert [e["command"] for e in commands(log)[expired:]].count("setWatchdog") == 1  # re-armed once
    check_limits(commands(log))  # across the hang, the program stop and the resume


@pytest.mark.parametrize("rig", [{"dry_run": True, "gripper": "robotiq_socket"}], indirect=True)
def test_dry_run_moves_nothing(rig):
    _, driver, client, log = rig
    z0 = client.poses[-1].pose.position.z
    for grip in (-1, 1):
        client.send([[0, 0, 1, 0, 0, 0, grip]] * 4)
        client.wait(0.3)
    assert abs(client.poses[-1].pose.position.z - z0) < 1e-6  # joint states and pose still flow, unchanged
    assert commands(log) == []  # not one command, not even the control script's set-up
    assert "dry run: servoL" in driver.output() and "dry run: gripper robotiq_socket 255" in driver.output()


@pytest.mark.parametrize(("params", "reason"), [
    ({}, "robot_ip is required"),
    ({"robot_ip": "127.0.0.2"}, "cannot start: connect: RuntimeError"),  # nothing listens there
    ({"robot_ip": "127.0.0.1", "gripper": "vacuum"}, "gripper must be one of"),
])
def test_the_driver_refuses_to_start_with_a_clear_reason(params, reason, tmp_path):
    driver = NodeProcess("ur5_driver.node", DOMAIN, params, log=tmp_path / "driver.log")
    assert driver.process.wait(30) == 1
    assert reason in driver.output(), driver.output()


def test_a_configured_gripper_that_cannot_be_reached_stops_the_start(tmp_path):
    emulator = start_emulator(tmp_path / "commands.jsonl", tmp_path)
    try:
        driver = NodeProcess("ur5_driver.node", DOMAIN, {"robot_ip": "127.0.0.1", "dry_run": False,
                                                         "gripper": "robotiq_socket", "gripper_port": 63399},
                             log=tmp_path / "driver.log")
        assert driver.process.wait(60) == 1
        assert "cannot start: connect: ConnectionRefusedError" in driver.output(), driver.output()
    finally:
        emulator.stop()


def test_killing_and_restarting_the_controller_stops_cleanly_and_reconnects(rig, tmp_path):
    emulator, driver, client, log = rig
    client.send([[0, 0, 1, 0, 0, 0, -1]] * 200)  # a 10 s plan, cut short by the loss
    assert wait_for(lambda: len([e for e in commands(log) if e["command"] == "servoL"]) > 20, 5, client.spin)
    emulator.stop(sig=signal.SIGKILL)
    assert wait_for(lambda: client.latest().get("connected") == "False", 10, client.spin), driver.output()[-3000:]
    assert driver.alive()
    log2 = tmp_path / "after_restart.jsonl"
    restarted = start_emulator(log2, tmp_path)
    try:
        assert wait_for(lambda: client.latest().get("connected") == "True", 30, client.spin), driver.output()[-3000:]
        assert int(client.latest()["reconnects"]) >= 1
        client.wait(1.5)  # the old plan would still run for seconds: it must not be replayed
        assert [e["command"] for e in commands(log2) if "doubles" in e] == ["setWatchdog"], commands(log2)
        z0 = client.poses[-1].pose.position.z
        for _ in range(5):  # fresh actions move the arm again
            client.send([[0, 0, 1, 0, 0, 0, -1]] * 4)
            client.wait(0.2)
        assert len(check_limits(commands(log2))) > 20
        assert client.poses[-1].pose.position.z > z0 + 0.01
    finally:
        restarted.stop()


@pytest.mark.parametrize("rig", [{"gripper": "robotiq_socket"},
                                 {"gripper": "digital_output", "gripper_output_bank": "tool",
                                  "gripper_output_pin": 1}], indirect=True)
def test_the_gripper_dimension_reaches_the_selected_gripper(rig):
    _, driver, client, log = rig
    for grip in (-1, 1, 1, -1):  # open, close, close again, open: three changes
        client.send([[0, 0, 0.2, 0, 0, 0, grip]] * 4)
        client.wait(0.3)
    assert wait_for(lambda: len([e for e in commands(log) if e["command"] in ("gripper", "digital_output")]) >= 3,
                    5, client.spin), driver.output()[-3000:]
    grips = [e for e in commands(log) if e["command"] in ("gripper", "digital_output")]
    if grips[0]["command"] == "gripper":
        assert [e["position"] for e in grips] == [0, 255, 0] and all(e["activated"] for e in grips)
    else:
        assert [bool(e["bits"] & (1 << 17)) for e in grips] == [False, True, False]  # tool output 1


@pytest.mark.parametrize("rig", [{"gripper": "robotiq_socket"}], indirect=True)
def test_a_failing_gripper_is_reported_and_never_holds_up_the_arm(rig):
    _, driver, client, log = rig
    fault = log.with_suffix(".gripper_fault")
    fault.touch()
    z0 = client.poses[-1].pose.position.z
    for grip in (1, -1, 1, -1, 1):
        client.send([[0, 0, 1, 0, 0, 0, grip]] * 4)
        client.wait(0.2)
    assert client.poses[-1].pose.position.z > z0 + 0.01  # the arm kept moving
    status = client.latest()
    assert int(status["gripper_errors"]) >= 1 and status["connected"] == "True" and status["reconnects"] == "0"
    assert "gripper command" in driver.output()
    fault.unlink()  # the gripper recovers: the failed 'close' is sent again (on a fresh socket)
    for _ in range(8):
        client.send([[0, 0, 0.2, 0, 0, 0, 1]] * 4)
        client.wait(0.2)
    assert [e["position"] for e in commands(log) if e["command"] == "gripper"][-1:] == [255], driver.output()[-2000:]


def test_hardware_flow_against_the_emulator(tmp_path):
    """What hardware.launch.py starts with emulate:=true: emulator, driver (+ camera), steering node, recorder."""
    import cv2

    from vla_steer_bringup import bringup
    from vla_steering.bags import bag_counts
    from vla_steering.policies.demo_vla import render_scene

    video = tmp_path / "camera.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 15, (64, 64))
    rng = np.random.default_rng(0)
    for _ in range(30):
        writer.write(render_scene("left", "red", rng)[..., ::-1])
    writer.release()
    processes, nodes = bringup.hardware(emulate=True, dry_run=False, camera=str(video),
                                        output_dir=str(tmp_path / "bags"), strengths="up=2.0",
                                        instruction="move left")  # the task as a launch argument
    assert [p.module for p in processes] == ["ur5_driver.emulator"]
    assert [n.module for n in nodes] == ["ur5_driver.node", "vla_steering_node.node", "vla_steering_node.recorder"]
    assert nodes[0].parameters["dry_run"] is False and nodes[0].parameters["robot_ip"] == "127.0.0.1"
    rclpy.init()
    started = [NodeProcess(processes[0].module, DOMAIN, log=tmp_path / "emulator.log",
                           ros_args=list(processes[0].arguments))]
    assert wait_for(lambda: port_open(30004) and port_open(29999), 30)
    # the driver last, once the policy has loaded: on two loaded cores a start-up that starves the driver
    # for the controller's 0.25 s watchdog stops the program (correctly: nothing moves until ~/resume_control)
    steering, recorder = (NodeProcess(n.module, DOMAIN, log=tmp_path / f"{n.name}.log", ros_args=n.ros_args())
                          for n in nodes[1:])
    assert wait_for(lambda: "ready" in steering.output() or not steering.alive(), 120), steering.output()[-2000:]
    driver = NodeProcess(nodes[0].module, DOMAIN, log=tmp_path / f"{nodes[0].name}.log", ros_args=nodes[0].ros_args())
    started += [driver, steering, recorder]
    client = Client()
    log = tmp_path / "bags" / "emulator_commands.jsonl"
    try:
        assert wait_for(lambda: len([e for e in commands(log) if e["command"] == "servoL"]) > 50, 120,
                        client.spin), started[2].output()[-2000:] + started[1].output()[-2000:]
        z0 = client.poses[0].pose.position.z if client.poses else None
        client.wait(1.0)
        assert z0 is not None and client.poses[-1].pose.position.z > z0  # 'up' steered the real driver upward
        check_limits(commands(log))
    finally:
        codes = [p.stop() for p in reversed(started)]
        client.node.destroy_node()
        rclpy.shutdown()
    assert codes[:3] == [0, 0, 0], [p.output()[-1500:] for p in started]
    bag = next((tmp_path / "bags").glob("run_*"))
    counts = bag_counts(bag)
    assert counts["/action_chunk"] > 0 and counts["/joint_states"] > 0 and counts["/camera/agentview/image_raw"] > 0


def test_ctrl_c_in_a_terminal_stops_the_arm_without_a_traceback(tmp_path):
    """`ros2 run ur5_driver ur5_driver`, then Ctrl-C: SIGINT to the whole foreground process group
    (the driver and its controller-link child)."""
    log = tmp_path / "commands.jsonl"
    emulator = start_emulator(log, tmp_path)
    driver = NodeProcess("ur5_driver.node", DOMAIN, {"robot_ip": "127.0.0.1", "dry_run": False},
                         log=tmp_path / "driver.log", preexec_fn=os.setpgrp)  # its own group, as a terminal's job
    rclpy.init()
    client = Client()
    try:
        assert wait_for(lambda: len(client.joints) > 5 or not driver.alive(), 60, client.spin), driver.output()[-3000:]
        client.send([[0, 0, 0.5, 0, 0, 0, -1]] * 40)  # two seconds of motion
        assert wait_for(lambda: any(e["command"] == "servoL" for e in commands(log)), 10, client.spin)
        os.killpg(driver.process.pid, signal.SIGINT)  # mid-motion
        driver.process.wait(30)
    finally:
        code = driver.stop()
        emulator.stop()
        client.node.destroy_node()
        rclpy.shutdown()
    output = driver.output()
    assert code == 0 and "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    names = [e["command"] for e in commands(log)]
    assert names[-2:] == ["servoStop", "stopScript"], names[-10:]  # the arm stopped through the live session
