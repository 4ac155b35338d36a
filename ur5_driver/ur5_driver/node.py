"""ur5_driver: the vla-steer topic contract on a UR5 through RTDE (ur_rtde), with the safety in the driver.

Publishes ``joint_states``, ``ee_pose`` (TCP, base frame) and robot/safety state on
``/diagnostics`` and ``robot_status`` at the servo rate; executes ``action_chunk`` (LIBERO-style
end-effector deltas) through a fixed-rate ``servoL`` loop that interpolates between policy steps.

The servo loop itself (plan, interpolation, watchdogs, stops, gripper) is ROS-free:
:class:`ur5_driver.servo.ServoLoop`; this node turns messages into its calls and its state into
messages. Why servoL: the policy speaks end-effector deltas, servoL takes a TCP pose per servo
tick and its controller-side lookahead/gain smooth the motion; speedL would integrate velocity
errors and servoJ would need IK here for every tick. Every tick's target goes through
:class:`ur5_driver.safety.SafetyFilter` (per-step caps, TCP speed and acceleration, braking
before the workspace walls, joint margins, reach and singularities); a malformed chunk is refused
with the reason; nothing outside the limits is sent.

Watchdogs: with no valid action for ``action_timeout_s`` the arm is stopped (``servoStop``); and
the controller-side RTDE watchdog is armed (ur_rtde's ``setWatchdog``: the controller stops the
control program when its command register goes without an update for that long). Every tick
that sends no command kicks it, so only a driver that stops ticking stops the program. During a
protective or emergency stop, or while the control program is not running, nothing is commanded
and pending actions are dropped; ``~/unlock_protective_stop`` unlocks through the dashboard and
``~/resume_control`` uploads the control program again, each only when a person asks.

Connection loss: ur_rtde runs in a child process (:mod:`ur5_driver.controller_link`) and every call
has a deadline (``controller_timeout_s``). A call that fails or times out kills the child, the
driver stops commanding, reports, reconnects with backoff through a fresh child, and drops every
action received before the loss. The gripper dimension of the action goes to the interface the
``gripper`` parameter selects (:mod:`ur5_driver.gripper`), only when it changes. ``dry_run``
(default true) computes and logs commands without connecting the control interface at all.
"""

from __future__ import annotations

import re
import time
from collections import deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ur5_driver.camera import CameraPublisher
from ur5_driver.controller_link import ControllerLink, LinkDown, ProgramNotRunning
from ur5_driver.gripper import GripperConfig
from ur5_driver.safety import SafetyLimits
from ur5_driver.servo import EMERGENCY_STOP_BIT, PLAYING, PROTECTIVE_STOP_BIT, ChunkRefused, ServoLoop, ServoSettings
from vla_steering import contract
from vla_steering_node import process
from vla_steering_node.conversions import joint_state_message, pose_message, qos_profile

JOINT_NAMES = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
               "wrist_3_joint"]


class DryRun:
    """The controller of a dry run: reads the arm through the link, logs every command instead of sending it."""

    def __init__(self, link: ControllerLink, logger, gripper: str):
        self.link, self.logger, self.gripper = link, logger, gripper

    def state(self) -> dict:
        return self.link.state()

    def servo_l(self, pose: list[float], period: float, lookahead: float, gain: float) -> None:
        self.logger.info(f"dry run: servoL {np.round(pose, 4).tolist()}", throttle_duration_sec=1.0)

    def servo_stop(self) -> None:
        self.logger.info("dry run: servoStop")

    def arm_watchdog(self, frequency_hz: float) -> None:
        pass

    def kick_watchdog(self) -> None:
        pass

    def grip(self, command: int) -> None:
        self.logger.info(f"dry run: gripper {self.gripper} {command}")


class UR5Driver(Node):
    def __init__(self) -> None:
        super().__init__("ur5_driver")
        ro = ParameterDescriptor(read_only=True)
        self.declare_parameter("robot_ip", "", ParameterDescriptor(read_only=True, description="required"))
        self.declare_parameter("dry_run", True, ParameterDescriptor(
            read_only=True, description="log commands, never move (no control interface)"))
        self.declare_parameter("servo_rate_hz", 125.0, ro)
        self.declare_parameter("lookahead_s", 0.1, ro)
        self.declare_parameter("gain", 300.0, ro)
        self.declare_parameter("translation_scale", 0.005, ParameterDescriptor(
            read_only=True, description="metres per action unit per policy step"))
        self.declare_parameter("rotation_scale", 0.02, ParameterDescriptor(
            read_only=True, description="radians per action unit per policy step"))
        self.declare_parameter("action_frame", "base", ro)
        self.declare_parameter("action_timeout_s", 0.1, ParameterDescriptor(
            read_only=True, description="stop the arm after this long without a valid action"))
        defaults = SafetyLimits()
        for name in ("max_linear_speed", "max_angular_speed", "max_linear_accel", "max_angular_accel",
                     "max_step_translation", "max_step_rotation", "joint_margin"):
            self.declare_parameter(name, float(getattr(defaults, name)), ro)
        self.declare_parameter("camera", "", ParameterDescriptor(
            read_only=True, description="OpenCV source for camera/agentview: device index, URL or video file; "
                                        "empty = none"))
        self.declare_parameter("camera_rate_hz", 15.0, ro)
        self.declare_parameter("workspace_min", list(defaults.workspace_min), ro)
        self.declare_parameter("workspace_max", list(defaults.workspace_max), ro)
        self.declare_parameter("controller_watchdog_s", 0.25, ParameterDescriptor(
            read_only=True, description="the controller stops the control program when the driver sends "
                                        "nothing for this long (the driver itself hung or died)"))
        self.declare_parameter("controller_timeout_s", 0.5, ParameterDescriptor(
            read_only=True, description="a call to the controller that takes longer means the connection is lost"))
        self.declare_parameter("gripper", "none", ParameterDescriptor(
            read_only=True, description="none | robotiq_socket (URCap socket) | digital_output"))
        self.declare_parameter("gripper_port", 63352, ro)
        self.declare_parameter("gripper_output_bank", "standard", ParameterDescriptor(
            read_only=True, description="digital_output: standard (pins 0-7) or tool (pins 0-1)"))
        self.declare_parameter("gripper_output_pin", 0, ro)
        self.declare_parameter("max_chunk_duration_s", 10.0, ParameterDescriptor(
            read_only=True, description="a chunk whose points reach further ahead is refused"))
        self.declare_parameter("min_singular_value", float(defaults.min_singular_value), ParameterDescriptor(
            read_only=True, description="the arm stops before the Jacobian's smallest singular value falls below"))
        ip = self.get_parameter("robot_ip").value
        if not ip:
            raise ValueError("robot_ip is required (no default, so that nobody drives a robot by accident)")
        self.ip = ip
        self.period = 1.0 / self.get_parameter("servo_rate_hz").value
        self.limits = SafetyLimits(
            workspace_min=tuple(self.get_parameter("workspace_min").value),
            workspace_max=tuple(self.get_parameter("workspace_max").value),
            **{n: self.get_parameter(n).value for n in (
                "max_linear_speed", "max_angular_speed", "max_linear_accel", "max_angular_accel",
                "max_step_translation", "max_step_rotation", "joint_margin", "min_singular_value")})
        self.gripper = GripperConfig(self.get_parameter("gripper").value, self.get_parameter("gripper_port").value,
                                     self.get_parameter("gripper_output_bank").value,
                                     self.get_parameter("gripper_output_pin").value)
        self.call_timeout = self.get_parameter("controller_timeout_s").value
        self.dry_run = self.get_parameter("dry_run").value
        controller_watchdog = self.get_parameter("controller_watchdog_s").value
        if not controller_watchdog > 0:
            raise ValueError(f"controller_watchdog_s must be > 0, got {controller_watchdog}")
        if self.get_parameter("action_frame").value not in ("base", "tool"):
            raise ValueError(f"action_frame must be base or tool, got {self.get_parameter('action_frame').value!r}")
        settings = ServoSettings(
            period=self.period, lookahead=self.get_parameter("lookahead_s").value,
            gain=self.get_parameter("gain").value,
            translation_scale=self.get_parameter("translation_scale").value,
            rotation_scale=self.get_parameter("rotation_scale").value,
            action_frame=self.get_parameter("action_frame").value,
            action_timeout=self.get_parameter("action_timeout_s").value, controller_watchdog=controller_watchdog,
            max_chunk_duration=self.get_parameter("max_chunk_duration_s").value, dry_run=self.dry_run,
            gripper=self.gripper.interface)
        self.last_report = ""
        self.last_logged: dict[str, float] = {}
        self.servo = ServoLoop(settings, self.limits, self.on_event)
        self.tick_starts: deque[float] = deque(maxlen=max(3, round(2.0 / self.period)))  # the last ~2 s
        self.tick_times: deque[float] = deque(maxlen=max(3, round(2.0 / self.period)))
        self.joints_pub = self.create_publisher(JointState, contract.JOINT_STATES.name,
                                                qos_profile(contract.JOINT_STATES))
        self.pose_pub = self.create_publisher(PoseStamped, contract.EE_POSE.name, qos_profile(contract.EE_POSE))
        self.status_pub = self.create_publisher(DiagnosticStatus, "robot_status", 10)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, contract.DIAGNOSTICS.name,
                                                     qos_profile(contract.DIAGNOSTICS))
        self.create_subscription(JointTrajectory, contract.ACTION_CHUNK.name, self.on_action,
                                 qos_profile(contract.ACTION_CHUNK))
        self.create_service(Trigger, "~/unlock_protective_stop", self.on_unlock)
        self.create_service(Trigger, "~/resume_control", self.on_resume)
        self.link: ControllerLink | None = None
        self.camera = None
        if self.get_parameter("camera").value:
            self.camera = CameraPublisher(self, "agentview", self.get_parameter("camera").value,
                                          self.get_parameter("camera_rate_hz").value)
        self.connect()  # a robot that cannot be reached at start-up is a start-up error
        self.create_timer(1.0, self.publish_diagnostics)

    # ---------------------------------------------------------------- connection
    def connect(self) -> None:
        """A fresh link (a new child process) and a fresh servo state: nothing from before is replayed."""
        self.link = ControllerLink(self.ip, control=not self.dry_run, gripper=self.gripper,
                                   call_timeout=self.call_timeout)
        self.controller = DryRun(self.link, self.get_logger(), self.gripper.interface) if self.dry_run else self.link
        self.servo.connected()

    def disconnect(self, reason: str) -> None:
        """Stop commanding: kill the link (the controller's watchdog stops the arm) and forget the state."""
        self.servo.report("reconnects", f"connection to {self.ip} lost ({reason}): stopped commanding, reconnecting")
        if self.link is not None:
            self.link.kill()
        self.link = None
        self.servo.connected()  # actions are ignored until the next link's first state
        self.publish_diagnostics()

    def connected(self) -> bool:
        return self.link is not None and bool(self.servo.state)

    # ---------------------------------------------------------------- inputs and events
    def on_action(self, msg: JointTrajectory) -> None:
        points = [list(p.positions) for p in msg.points]
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        try:
            self.servo.accept_chunk(points, times, time.monotonic())
        except ChunkRefused as error:
            self.servo.report("refused", f"action chunk refused: {error}")

    def on_event(self, counter: str, text: str) -> None:
        """Keep the servo loop's latest event for the status and log it, at most once a second per kind
        (a counter and the reason's words: one refusal never hides another)."""
        self.last_report = text
        kind = counter + re.sub(r"-?\d[\d.e+-]*", "#", text)[:80]
        now = time.monotonic()
        if now - self.last_logged.get(kind, -1.0) >= 1.0:
            self.last_logged[kind] = now
            self.get_logger().warning(text)
        if counter in ("safety_stops", "program_stops", "reconnects"):
            self.publish_diagnostics()  # a stop is reported at once, not at the next 1 Hz status

    def on_unlock(self, request, response):
        return self.ask_controller(response, "unlock_protective_stop", "unlock protective stop sent")

    def on_resume(self, request, response):
        response = self.ask_controller(response, "restart_program", "control program uploaded and running again")
        if response.success:
            self.servo.resumed()
        return response

    def ask_controller(self, response, method: str, done: str):
        """A Trigger service that asks the controller for something, only when a person calls it."""
        link = self.link
        if self.dry_run or link is None:
            response.success = False
            response.message = "dry run: no control connection" if self.dry_run else "not connected to the robot"
            return response
        try:
            reply = link.call(method, timeout=10.0)
        except (LinkDown, ProgramNotRunning) as error:
            response.success, response.message = False, f"{method} failed: {error}"
            return response
        response.success = True
        response.message = done + (f"; the dashboard said {reply!r}" if reply else "")
        return response

    # ---------------------------------------------------------------- state out
    def publish_state(self, q: np.ndarray, tcp: np.ndarray) -> None:
        stamp = self.get_clock().now().to_msg()
        self.joints_pub.publish(joint_state_message(JOINT_NAMES, q.tolist(), stamp))
        self.pose_pub.publish(pose_message(tcp[:3], Rotation.from_rotvec(tcp[3:]).as_quat(), stamp, "base"))

    def status(self) -> DiagnosticStatus:
        s = self.servo.state
        bits = s.get("bits", 0)
        values = {"connected": self.connected(), "dry_run": self.dry_run,
                  "protective_stop": bool(bits & (1 << PROTECTIVE_STOP_BIT)),
                  "emergency_stop": bool(bits & (1 << EMERGENCY_STOP_BIT)),
                  "program_running": s.get("runtime_state") == PLAYING, "robot_mode": s.get("robot_mode"),
                  "safety_mode": s.get("safety_mode"), "speed_scaling": s.get("speed_scaling"),
                  **self.servo.counts}
        intervals = np.diff(self.tick_starts.copy()) * 1e3
        if intervals.size:  # the servo loop's own period over the last ~2 s
            values["servo_period_p50_ms"] = round(float(np.percentile(intervals, 50)), 3)
            values["servo_period_p99_ms"] = round(float(np.percentile(intervals, 99)), 3)
        ticks = np.asarray(self.tick_times.copy()) * 1e3
        if ticks.size:  # how long one tick's work takes (IK included)
            values["servo_tick_p50_ms"] = round(float(np.percentile(ticks, 50)), 3)
            values["servo_tick_p99_ms"] = round(float(np.percentile(ticks, 99)), 3)
        level = DiagnosticStatus.ERROR if values["protective_stop"] or values["emergency_stop"] or \
            not values["connected"] else (DiagnosticStatus.WARN if self.last_report else DiagnosticStatus.OK)
        return DiagnosticStatus(level=level, name=f"{self.get_name()}: robot", hardware_id=self.ip,
                                message=self.last_report or "ok",
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def publish_diagnostics(self) -> None:
        status = self.status()
        self.status_pub.publish(status)
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    # ---------------------------------------------------------------- the servo loop
    def tick(self) -> None:
        started = time.monotonic()
        self.tick_starts.append(started)
        state = self.servo.tick(self.controller, started)
        self.tick_times.append(time.monotonic() - started)
        self.publish_state(np.asarray(state["q"]), np.asarray(state["tcp"]))

    def run(self) -> None:
        backoff = 0.5
        next_tick = time.monotonic()
        while rclpy.ok():
            if self.link is None:
                time.sleep(backoff)
                try:
                    self.connect()
                    backoff = 0.5
                    next_tick = time.monotonic()
                except LinkDown as error:
                    self.get_logger().warning(f"reconnect failed: {error}", throttle_duration_sec=2.0)
                    backoff = min(backoff * 2, 5.0)
                continue
            try:
                self.tick()
            except ProgramNotRunning as error:  # it stopped between reading the state and commanding
                self.servo.halt()
                self.get_logger().warning(str(error), throttle_duration_sec=1.0)
            except LinkDown as error:
                self.disconnect(str(error))
                continue
            next_tick += self.period
            time.sleep(max(0.0, next_tick - time.monotonic()))
            if time.monotonic() - next_tick > 10 * self.period:
                next_tick = time.monotonic()

    def shutdown(self) -> None:
        if self.camera is not None:
            self.camera.close()
        if self.link is not None:
            self.link.close()


def main(args=None) -> None:
    process.run(UR5Driver, UR5Driver.run, (ValueError, LinkDown), "ur5_driver", cleanup=UR5Driver.shutdown,
                args=args, on_error=lambda node, error: node.servo.report("errors", f"a callback failed: {error}"))


if __name__ == "__main__":
    main()
