"""vla_steering_node: runs a steered VLA policy on camera / joint topics and publishes action chunks.

Threads: the rclpy executor (subscriptions, parameter services, diagnostics timer) spins in
a background thread; inference runs in the main thread, woken as soon as a fresh primary
camera image arrives, on the newest inputs. A slow inference therefore never blocks a
parameter set, and a parameter set applies from the next inference (one engine update,
pinned for a whole prediction, so never torn). ``~/reset`` (std_srvs/Trigger) forgets the inputs
received so far, for a new episode (a runner that keeps the node across episodes calls it).

Parameters: see ``declare_parameters`` below and the README's table. Read-only parameters are
declared read-only: a set is refused, not silently ignored.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_steering import contract
from vla_steering.dictionaries import DictionaryError
from vla_steering.policies import POLICY_OPTIONS, ObservationError, PolicyOutputError, make_policy, steer_from_file
from vla_steering_node import process, steering_parameters
from vla_steering_node.conversions import (
    MAX_INSTRUCTION_CHARS,
    InputError,
    chunk_to_trajectory,
    compressed_to_rgb,
    diagnostics_message,
    image_to_rgb,
    joint_positions,
    pose_state,
    qos_profile,
    steering_state_message,
)
from vla_steering_node.observation_buffer import NotReady, ObservationBuffer
from vla_steering_node.share import share_file

# the backends' loader options as read-only parameters ("" = the backend's default)
POLICY_OPTION_DEFAULTS = {"unnorm_key": "", "center_crop_scale": 1.0, "dtype": "bfloat16", "seed": 0, "tokenizer": "",
                          "asset_id": "", "vlm": ""}
LIVE_OPTIONS = ("seed",)  # loader options a set changes from the next prediction (the others are read-only)


def default_dictionary() -> str:
    """The demo VLA's dictionary, where the package's data is installed (:mod:`vla_steering_node.share`)."""
    return str(share_file("vla_steering_node", "config/demo_vla_dictionary.yaml"))


class Counters:
    """What /diagnostics reports; updated from several threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.actions = 0
        self.rejected_inputs = 0
        self.not_ready = 0
        self.policy_errors = 0
        self.clipped_actions = 0  # chunks with values outside the action space, clipped
        self.callback_errors = 0  # exceptions a callback raised (logged with the traceback; the node goes on)
        self.latencies_ms: deque[float] = deque(maxlen=200)
        self.action_times: deque[float] = deque(maxlen=50)
        self.last_problem = ""

    def problem(self, field: str, text: str) -> None:
        with self.lock:
            setattr(self, field, getattr(self, field) + 1)
            self.last_problem = text


class VlaSteeringNode(Node):
    def __init__(self, **kwargs) -> None:
        # Undeclared names reach validate_parameters, which refuses them with a reason that names
        # the known concepts (rclpy's own refusal does not say which name was wrong).
        super().__init__("vla_steering_node", allow_undeclared_parameters=True, **kwargs)
        self.counters = Counters()
        self.declare_parameters_and_load()
        self.buffer = ObservationBuffer(self.cameras, int(self.get_parameter("stale_after_s").value * 1e9))
        initial = self.get_parameter("instruction").value
        if initial and len(initial) <= MAX_INSTRUCTION_CHARS:
            self.buffer.put_instruction(initial)
        elif initial:
            raise ValueError(f"instruction parameter of {len(initial)} characters (at most {MAX_INSTRUCTION_CHARS})")

        # state before images: the executor serves ready subscriptions in creation order, so an observation's
        # instruction, pose and joints received with its image are taken in before the image wakes inference
        self.create_subscription(String, contract.INSTRUCTION.name, self.on_instruction,
                                 qos_profile(contract.INSTRUCTION))
        self.create_subscription(PoseStamped, contract.EE_POSE.name, self.on_ee_pose, qos_profile(contract.EE_POSE))
        self.create_subscription(JointState, contract.JOINT_STATES.name, self.on_joint_state,
                                 qos_profile(contract.JOINT_STATES))
        for camera in self.cameras:
            for topic, kind in ((contract.camera(camera), Image),
                                (contract.compressed_camera(camera), CompressedImage)):
                self.create_subscription(kind, topic.name, lambda msg, c=camera: self.on_image(c, msg),
                                         qos_profile(topic))
        self.action_pub = self.create_publisher(JointTrajectory, contract.ACTION_CHUNK.name,
                                                qos_profile(contract.ACTION_CHUNK))
        self.steering_pub = self.create_publisher(DiagnosticArray, contract.STEERING_STATE.name,
                                                  qos_profile(contract.STEERING_STATE))
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, contract.DIAGNOSTICS.name,
                                                     qos_profile(contract.DIAGNOSTICS))
        self.create_timer(1.0, self.publish_diagnostics)
        self.create_service(Trigger, "~/reset", self.on_reset)
        self._last_pose: PoseStamped | None = None
        self.get_logger().info(
            f"policy {self.policy_name!r} ready; cameras {self.cameras}; concepts {list(self.engine.concepts)}")

    # ------------------------------------------------------------------ parameters
    def declare_parameters_and_load(self) -> None:
        def read_only(description: str) -> ParameterDescriptor:
            return ParameterDescriptor(description=description + " (read-only: set at start)", read_only=True)

        self.declare_parameter("policy", "demo", read_only("demo, openvla, pi0, pi05 or smolvla"))
        self.declare_parameter("checkpoint", "", read_only("local checkpoint directory (not for demo)"))
        self.declare_parameter("device", "cpu", read_only("torch device"))
        self.declare_parameter("steering.dictionary", default_dictionary(), read_only("intervention dictionary YAML"))
        self.declare_parameter("max_abs_strength", 20.0, read_only("steering strengths are limited to +-this"))
        self.declare_parameter("cameras", list(contract.CAMERAS),
                               read_only("camera names; topics camera/<name>/image_raw; the first triggers "
                                         "inference"))
        self.declare_parameter("state_source", "joints",
                               read_only("joints: joint_states positions; libero: ee_pose + gripper joints"))
        self.declare_parameter("gripper_joints", ["gripper_finger_left", "gripper_finger_right"],
                               read_only("joint names of the two gripper fingers (state_source libero)"))
        self.declare_parameter("control_rate_hz", 1.0 / contract.CONTROL_PERIOD_S,
                               ParameterDescriptor(description="spacing of the chunk's time_from_start"))
        self.declare_parameter("execute_steps", 0, ParameterDescriptor(
            description="publish only the first n steps of each chunk (replan after them); 0 = whole chunk"))
        self.declare_parameter("stale_after_s", 1.0, read_only("images / state older than this are refused"))
        self.declare_parameter("instruction", "", read_only("the task until one arrives on the instruction topic"))
        for option, default in POLICY_OPTION_DEFAULTS.items():
            takers = [f"{name}: {options[option]}" for name, options in POLICY_OPTIONS.items() if option in options]
            description = "; ".join(takers)
            self.declare_parameter(option, default, ParameterDescriptor(
                description=description + " (applies from the next prediction)") if option in LIVE_OPTIONS
                else read_only(description))

        self.declare_parameter("policy_server", "", read_only(
            "name of a Ray policy server to send observations to (vla_steering.policy_server; its policy and "
            "dictionary replace this node's); empty = load the policy here"))
        self.declare_parameter("ray_address", "", read_only("the policy server's Ray cluster (empty = auto)"))

        self.policy_name = self.get_parameter("policy").value
        self.cameras = list(self.get_parameter("cameras").value)
        server = self.get_parameter("policy_server").value
        if server:
            from vla_steering.policy_server import RemoteSteeredPolicy

            self.policy = RemoteSteeredPolicy(server, self.get_parameter("ray_address").value,
                                              {o: self.get_parameter(o).value for o in LIVE_OPTIONS})
            self.policy_name = f"{self.policy.name} (policy server {server})"
        else:
            options = {o: self.get_parameter(o).value for o in POLICY_OPTIONS.get(self.policy_name, {})}
            policy = make_policy(self.policy_name, self.get_parameter("checkpoint").value,
                                 self.get_parameter("device").value, **{k: v for k, v in options.items() if v != ""})
            self.policy = steer_from_file(policy, self.get_parameter("steering.dictionary").value,
                                          self.get_parameter("max_abs_strength").value)
        self.engine = self.policy.engine
        for name, default, descriptor in steering_parameters.declarations(self.engine):
            self.declare_parameter(name, default, descriptor)
        # apply what parameter files / launch arguments set for the steering parameters
        steering_parameters.apply(self.engine, [self.get_parameter(n) for n, _, _ in
                                                steering_parameters.declarations(self.engine)])
        self.add_on_set_parameters_callback(self.validate_parameters)
        self.add_post_set_parameters_callback(self.apply_parameters)

    def validate_parameters(self, parameters) -> SetParametersResult:
        for p in parameters:
            if not self.has_parameter(p.name):
                known = ", ".join(steering_parameters.strength_name(c) for c in self.engine.concepts)
                return SetParametersResult(successful=False, reason=(
                    f"unknown parameter {p.name!r}; the steering parameters are steering.enabled, "
                    f"steering.mode and {known}"))
            if p.name == "control_rate_hz" and not (isinstance(p.value, float) and 0.0 < p.value <= 1000.0):
                return SetParametersResult(successful=False, reason="control_rate_hz must be in (0, 1000]")
            if p.name == "execute_steps" and not (isinstance(p.value, int) and p.value >= 0):
                return SetParametersResult(successful=False, reason="execute_steps must be an integer >= 0")
            if p.name == "seed" and not isinstance(p.value, int):
                return SetParametersResult(successful=False, reason="seed must be an integer")
        return steering_parameters.validate(self.engine, parameters)

    def apply_parameters(self, parameters) -> None:
        steering_parameters.apply(self.engine, parameters)
        for p in parameters:
            if p.name in LIVE_OPTIONS and hasattr(self.policy.policy, p.name):
                setattr(self.policy.policy, p.name, p.value)

    def on_reset(self, request, response):
        """Forget the inputs received so far: the next episode's first observation is answered, whatever its stamp."""
        self.buffer.clear(self.get_parameter("instruction").value)
        self._last_pose = None
        response.success, response.message = True, "inputs cleared"
        return response

    # ------------------------------------------------------------------ inputs
    def reject(self, text: str) -> None:
        self.counters.problem("rejected_inputs", text)
        self.get_logger().warning(text, throttle_duration_sec=2.0)

    def from_the_future(self, what: str, msg) -> bool:
        """Refuse (True) a message stamped further ahead of the node's clock than ``stale_after_s``."""
        ahead = (_stamp_ns(msg) - self.get_clock().now().nanoseconds) / 1e9
        if ahead > self.get_parameter("stale_after_s").value:
            self.reject(f"{what}: stamped {ahead:.1f} s in the future")
            return True
        return False

    def on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        try:
            rgb = image_to_rgb(msg) if isinstance(msg, Image) else compressed_to_rgb(msg)
        except InputError as error:
            self.reject(f"camera {camera}: {error}")
            return
        if not self.from_the_future(f"camera {camera}", msg):
            self.buffer.put_image(camera, rgb, _stamp_ns(msg))

    def on_joint_state(self, msg: JointState) -> None:
        try:
            if self.get_parameter("state_source").value == "libero":
                if self._last_pose is None:
                    return
                state = pose_state(self._last_pose, msg, list(self.get_parameter("gripper_joints").value))
            else:
                state = joint_positions(msg)
        except InputError as error:
            self.reject(f"joint_states: {error}")
            return
        if not self.from_the_future("joint_states", msg):
            self.buffer.put_state(state, _stamp_ns(msg))

    def on_ee_pose(self, msg: PoseStamped) -> None:
        self._last_pose = msg

    def on_instruction(self, msg: String) -> None:
        if len(msg.data) > MAX_INSTRUCTION_CHARS:
            self.reject(f"instruction of {len(msg.data)} characters refused (at most {MAX_INSTRUCTION_CHARS}); "
                        "keeping the last one")
            return
        if not self.buffer.put_instruction(msg.data):
            self.reject("instruction is empty; keeping the last non-empty one")
            return
        self.get_logger().info(f"instruction: {msg.data!r}")

    # ------------------------------------------------------------------ inference
    def step(self) -> bool:
        """One inference on the newest inputs if a fresh image is waiting; True if an action was published."""
        if not self.buffer.wait_fresh(timeout_s=0.1):
            return False
        start = time.perf_counter()
        try:
            observation, stamp_ns = self.buffer.take(self.get_clock().now().nanoseconds)
            chunk = self.policy.act(observation)
        except NotReady as why:
            self.counters.problem("not_ready", str(why))
            self.get_logger().warning(f"no action: {why}", throttle_duration_sec=2.0)
            return False
        except ObservationError as error:
            self.reject(f"observation refused: {error}")
            return False
        except (PolicyOutputError, RuntimeError, ValueError) as error:  # recover on the next input
            self.counters.problem("policy_errors", f"policy failed: {error}")
            self.get_logger().error(f"policy failed: {error}", throttle_duration_sec=2.0)
            return False
        steps = self.get_parameter("execute_steps").value
        if steps:
            chunk = type(chunk)(chunk.actions[:steps], chunk.space, chunk.steering, chunk.clipped)
        if chunk.clipped:
            self.counters.problem("clipped_actions", f"{chunk.clipped} action values outside "
                                                     f"[{chunk.space.low}, {chunk.space.high}] clipped")
        stamp = Time(nanoseconds=stamp_ns).to_msg()
        period = 1.0 / self.get_parameter("control_rate_hz").value
        self.action_pub.publish(chunk_to_trajectory(chunk, stamp, period))
        self.steering_pub.publish(steering_state_message(chunk.steering, stamp, self.get_name()))
        with self.counters.lock:
            self.counters.actions += 1
            self.counters.latencies_ms.append((time.perf_counter() - start) * 1e3)
            self.counters.action_times.append(time.monotonic())
        return True

    def publish_diagnostics(self) -> None:
        c = self.counters
        with c.lock:
            latency = np.percentile(c.latencies_ms, 50) if c.latencies_ms else float("nan")
            times = list(c.action_times)
            rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
            values = {"actions_published": c.actions, contract.LATENCY_KEY: f"{latency:.1f}",
                      "action_rate_hz": f"{rate:.2f}", "dropped_observations": self.buffer.dropped,
                      "repeated_observations": self.buffer.repeats,
                      "rejected_inputs": c.rejected_inputs, "not_ready": c.not_ready,
                      "policy_errors": c.policy_errors, "clipped_actions": c.clipped_actions,
                      "callback_errors": c.callback_errors, "last_problem": c.last_problem}
            problems = c.rejected_inputs + c.policy_errors + c.callback_errors
        level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        self.diagnostics_pub.publish(diagnostics_message(f"{self.get_name()}: inference", self.policy_name, level,
                                                         c.last_problem or "ok", values,
                                                         self.get_clock().now().to_msg()))

    def on_callback_error(self, error: Exception) -> None:
        self.counters.problem("callback_errors", f"a callback failed: {type(error).__name__}: {error}")


def _stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def serve(node: VlaSteeringNode) -> None:
    while rclpy.ok():
        node.step()


def main(args=None) -> None:
    process.run(VlaSteeringNode, serve, (DictionaryError, FileNotFoundError, ImportError, ValueError),
                "vla_steering_node", args=args, on_error=VlaSteeringNode.on_callback_error)


if __name__ == "__main__":
    main()
