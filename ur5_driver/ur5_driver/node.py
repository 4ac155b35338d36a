"""ur5_driver: the vla-steer topic contract on a UR5 through RTDE (ur_rtde), with the safety in the driver.

Publishes ``joint_states``, ``ee_pose`` (TCP, base frame) and robot/safety state on
``/diagnostics`` and ``robot_status`` at the servo rate; executes ``action_chunk`` (LIBERO-style
end-effector deltas) through a fixed-rate ``servoL`` loop that interpolates between policy steps.

Why servoL: the policy speaks end-effector deltas, servoL takes a TCP pose per servo tick and
its controller-side lookahead/gain smooth the motion; speedL would integrate velocity errors and
servoJ would need IK here for every tick. Every tick's target goes through
:class:`ur5_driver.safety.SafetyFilter` (per-step caps, TCP speed and acceleration, workspace box,
joint margins); NaN is refused; nothing outside the limits is sent.

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

import threading
import time
from collections import deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ur5_driver.camera import CameraPublisher
from ur5_driver.controller_link import ControllerLink, LinkDown, ProgramNotRunning
from ur5_driver.gripper import GripperConfig, gripper_command
from ur5_driver.safety import SafetyFilter, SafetyLimits, UnsafeCommand, delta_to_target
from vla_steering_node import process

JOINT_NAMES = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
               "wrist_3_joint"]
PROTECTIVE_STOP_BIT, EMERGENCY_STOP_BIT = 2, 7
PLAYING = 2  # runtime_state of a running control program


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
        ip = self.get_parameter("robot_ip").value
        if not ip:
            raise ValueError("robot_ip is required (no default, so that nobody drives a robot by accident)")
        self.ip = ip
        self.limits = SafetyLimits(
            workspace_min=tuple(self.get_parameter("workspace_min").value),
            workspace_max=tuple(self.get_parameter("workspace_max").value),
            **{n: self.get_parameter(n).value for n in (
                "max_linear_speed", "max_angular_speed", "max_linear_accel", "max_angular_accel",
                "max_step_translation", "max_step_rotation", "joint_margin")})
        self.safety = SafetyFilter(self.limits)
        self.gripper = GripperConfig(self.get_parameter("gripper").value, self.get_parameter("gripper_port").value,
                                     self.get_parameter("gripper_output_bank").value,
                                     self.get_parameter("gripper_output_pin").value)
        self.call_timeout = self.get_parameter("controller_timeout_s").value
        self.dry_run = self.get_parameter("dry_run").value
        self.period = 1.0 / self.get_parameter("servo_rate_hz").value
        self.tick_starts: deque[float] = deque(maxlen=max(3, round(2.0 / self.period)))  # the last ~2 s
        # read-only parameters read once: the servo loop does no parameter look-ups per tick
        self.lookahead = self.get_parameter("lookahead_s").value
        self.gain = self.get_parameter("gain").value
        self.action_timeout = self.get_parameter("action_timeout_s").value
        self.controller_watchdog = self.get_parameter("controller_watchdog_s").value
        if not self.controller_watchdog > 0:
            raise ValueError(f"controller_watchdog_s must be > 0, got {self.controller_watchdog}")
        self.joints_pub = self.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.pose_pub = self.create_publisher(PoseStamped, "ee_pose", qos_profile_sensor_data)
        self.status_pub = self.create_publisher(DiagnosticStatus, "robot_status", 10)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointTrajectory, "action_chunk", self.on_action, 10)
        self.create_service(Trigger, "~/unlock_protective_stop", self.on_unlock)
        self.create_service(Trigger, "~/resume_control", self.on_resume)
        self.lock = threading.Lock()
        self.plan: list[np.ndarray] = []  # TCP targets, one per policy step
        self.plan_times: list[float] = []
        self.plan_grips: list[int | None] = []  # gripper command per policy step
        self.counts = {"clamped": 0, "refused": 0, "watchdog_stops": 0, "safety_stops": 0, "program_stops": 0,
                       "gripper_errors": 0, "reconnects": 0}
        self.last_report = ""
        self.last_logged: dict[str, float] = {}
        self.link: ControllerLink | None = None
        self.state: dict = {}
        self.camera = None
        if self.get_parameter("camera").value:
            self.camera = CameraPublisher(self, "agentview", self.get_parameter("camera").value,
                                          self.get_parameter("camera_rate_hz").value)
        self.connect()  # a robot that cannot be reached at start-up is a start-up error
        self.create_timer(1.0, self.publish_diagnostics)

    # ---------------------------------------------------------------- connection
    def connect(self) -> None:
        """A fresh link (a new child process) and an empty plan: nothing from before is replayed."""
        self.link = ControllerLink(self.ip, control=not self.dry_run, gripper=self.gripper,
                                   call_timeout=self.call_timeout)
        self.watchdog_armed = False
        with self.lock:
            self.plan, self.plan_times, self.plan_grips = [], [], []
        self.commanded, self.stopped, self.grip_sent, self.grip_time = None, True, None, 0.0

    def disconnect(self, reason: str) -> None:
        """Stop commanding: kill the link (the controller's watchdog stops the arm) and forget the state."""
        self.report("reconnects", f"connection to {self.ip} lost ({reason}): stopped commanding, reconnecting")
        if self.link is not None:
            self.link.kill()
        self.link, self.state = None, {}  # actions are ignored until connect() starts afresh
        self.publish_diagnostics()

    def connected(self) -> bool:
        return self.link is not None and bool(self.state)

    # ---------------------------------------------------------------- inputs
    def on_action(self, msg: JointTrajectory) -> None:
        if not self.state:
            return
        actions = np.array([list(p.positions) for p in msg.points], np.float64).reshape(len(msg.points), -1)
        if actions.size == 0 or actions.shape[1] < 6 or not np.all(np.isfinite(actions)):
            self.report("refused", f"action chunk refused (shape {actions.shape}, finite "
                        f"{bool(np.all(np.isfinite(actions)))})")
            return
        times = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points])
        if times[0] < 0 or np.any(np.diff(times) < 0):
            self.report("refused", f"action chunk refused: time_from_start must not decrease ({times.tolist()})")
            return
        actions = np.clip(actions, -1.0, 1.0)
        start = np.asarray(self.state["tcp"]) if self.commanded is None else self.commanded
        targets, pose = [], start
        for row in actions:
            pose = delta_to_target(pose, row, self.get_parameter("translation_scale").value,
                                   self.get_parameter("rotation_scale").value, self.get_parameter("action_frame").value)
            targets.append(pose)
        grips = [gripper_command(self.gripper.interface, row[6]) if len(row) > 6 else None for row in actions]
        now = time.monotonic()
        with self.lock:
            self.plan = targets
            self.plan_times = (now + times).tolist()
            self.plan_grips = grips
            self.plan_start, self.plan_origin = now, start

    def report(self, counter: str, text: str) -> None:
        """Count an event, keep it for the status, and log it (at most once a second per kind)."""
        self.counts[counter] += 1
        self.last_report = text
        now = time.monotonic()
        if now - self.last_logged.get(counter, -1.0) >= 1.0:
            self.last_logged[counter] = now
            self.get_logger().warning(text)

    def on_unlock(self, request, response):
        return self.ask_controller(response, "unlock_protective_stop", "unlock protective stop sent")

    def on_resume(self, request, response):
        response = self.ask_controller(response, "restart_program", "control program uploaded and running again")
        if response.success:
            self.watchdog_armed = False  # the new program has no watchdog until the next tick arms it
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

    # ---------------------------------------------------------------- the servo loop
    def desired(self, now: float) -> np.ndarray | None:
        """The TCP target for now, interpolated between policy steps; None once the plan has run out
        for longer than ``action_timeout_s`` (the watchdog)."""
        with self.lock:
            if not self.plan or now - self.plan_times[-1] > self.action_timeout:
                return None
            times, targets = [self.plan_start, *self.plan_times], [self.plan_origin, *self.plan]
        if now >= times[-1]:
            return targets[-1]
        i = int(np.searchsorted(times, now, side="right")) - 1
        w = (now - times[i]) / (times[i + 1] - times[i])
        a, b = targets[i], targets[i + 1]
        relative = (Rotation.from_rotvec(b[3:]) * Rotation.from_rotvec(a[3:]).inv()).as_rotvec()
        rotation = Rotation.from_rotvec(w * relative) * Rotation.from_rotvec(a[3:])
        return np.concatenate([a[:3] + w * (b[:3] - a[:3]), rotation.as_rotvec()])

    def grip(self, now: float) -> None:
        """Send the gripper command of the policy step now running if it changed, or again once a
        second while the gripper reports a failure."""
        with self.lock:
            if not self.plan_grips:
                return
            grip = self.plan_grips[min(int(np.searchsorted(self.plan_times, now, side="right")),
                                       len(self.plan_grips) - 1)]
        retry = bool(self.state.get("gripper_error")) and now - self.grip_time >= 1.0
        if grip is None or (grip == self.grip_sent and not retry):
            return
        if self.dry_run:
            self.get_logger().info(f"dry run: gripper {self.gripper.interface} {grip}")
        else:
            self.link.call("grip", grip)
        self.grip_sent, self.grip_time = grip, now

    def tick(self) -> None:
        """Read the arm, then command it: a servo target, a stop, or (idle) a watchdog kick."""
        s = self.link.call("state")
        q, tcp = np.asarray(s["q"]), np.asarray(s["tcp"])
        previous, self.state = self.state, {**s, "q": q, "tcp": tcp}
        self.publish_state(q, tcp)
        if any(previous.get(k) != s[k] for k in ("bits", "robot_mode", "safety_mode", "runtime_state")):
            self.publish_diagnostics()  # a stop is reported at once, not at the next 1 Hz status
        if s["gripper_error"] and s["gripper_error"] != previous.get("gripper_error"):
            self.report("gripper_errors", s["gripper_error"])  # the arm carries on
        if not self.dry_run and s["runtime_state"] != PLAYING:
            self.halt("program_stops", "the control program is not running (stopped on the pendant, by the "
                                       "controller's watchdog or by a fault): nothing commanded until "
                                       "~/resume_control is called")
            return
        if not self.dry_run and not self.watchdog_armed:
            self.link.call("arm_watchdog", 1.0 / self.controller_watchdog)
            self.watchdog_armed = True
        if s["bits"] & (1 << PROTECTIVE_STOP_BIT | 1 << EMERGENCY_STOP_BIT):
            kind = "emergency" if s["bits"] & (1 << EMERGENCY_STOP_BIT) else "protective"
            self.halt("safety_stops", f"{kind} stop: no motion commanded")
            sent = False
        else:
            sent = self.move(q, tcp)
        if not sent and not self.dry_run:
            self.link.call("kick_watchdog")  # an idle driver still shows the controller it is alive

    def halt(self, counter: str, text: str) -> None:
        """Command nothing and drop the plan: actions from before a stop are stale."""
        with self.lock:
            self.plan = []
        if not self.stopped:
            self.report(counter, text)
        self.stopped, self.commanded = True, None

    def move(self, q: np.ndarray, tcp: np.ndarray) -> bool:
        """Follow the plan for one tick; True when a command went to the controller."""
        now = time.monotonic()
        target = self.desired(now)
        if target is None:
            if self.stopped:
                return False
            if not self.dry_run:
                self.link.call("servo_stop")
            self.report("watchdog_stops", "no valid action in time: arm stopped")
            self.safety.reset()
            self.stopped, self.commanded = True, None
            return not self.dry_run
        current = tcp if self.commanded is None else self.commanded
        try:
            safe, reports = self.safety.filter(current, target, q, self.period)
        except UnsafeCommand as error:
            self.report("refused", f"command refused: {error}")
            return False
        if reports:
            self.report("clamped", "; ".join(reports))
        if self.dry_run:
            self.get_logger().info(f"dry run: servoL {np.round(safe, 4).tolist()}", throttle_duration_sec=1.0)
        else:
            self.link.call("servo_l", safe.tolist(), self.period, self.lookahead, self.gain)
        self.commanded, self.stopped = safe, False
        self.grip(now)
        return not self.dry_run

    def publish_state(self, q: np.ndarray, tcp: np.ndarray) -> None:
        stamp = self.get_clock().now().to_msg()
        joints = JointState(name=JOINT_NAMES, position=q.tolist())
        joints.header.stamp = stamp
        self.joints_pub.publish(joints)
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, "base"
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = tcp[:3].tolist()
        quat = Rotation.from_rotvec(tcp[3:]).as_quat()
        o = pose.pose.orientation
        o.x, o.y, o.z, o.w = quat.tolist()
        self.pose_pub.publish(pose)

    def status(self) -> DiagnosticStatus:
        s = self.state
        bits = s.get("bits", 0)
        values = {"connected": self.connected(), "dry_run": self.dry_run,
                  "protective_stop": bool(bits & (1 << PROTECTIVE_STOP_BIT)),
                  "emergency_stop": bool(bits & (1 << EMERGENCY_STOP_BIT)),
                  "program_running": s.get("runtime_state") == 2, "robot_mode": s.get("robot_mode"),
                  "safety_mode": s.get("safety_mode"), "speed_scaling": s.get("speed_scaling"), **self.counts}
        intervals = np.diff(self.tick_starts.copy()) * 1e3
        if intervals.size:  # the servo loop's own period over the last ~2 s
            values["servo_period_p50_ms"] = round(float(np.percentile(intervals, 50)), 3)
            values["servo_period_p99_ms"] = round(float(np.percentile(intervals, 99)), 3)
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
            self.tick_starts.append(time.monotonic())
            try:
                self.tick()
            except ProgramNotRunning as error:  # it stopped between reading the state and commanding
                self.halt("program_stops", str(error))
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
    process.run(UR5Driver, UR5Driver.run, (ValueError, LinkDown), "ur5_driver",
                cleanup=UR5Driver.shutdown, args=args)


if __name__ == "__main__":
    main()
