"""sim_bridge: LIBERO in lockstep on simulation time, speaking the vla-steer topic contract.

Loop (main thread): publish /clock = sim time, then joint_states, ee_pose and, when a new
action is needed, both camera images, all stamped with sim time; wait (wall time, at most
``action_timeout_s``) for an ``action_chunk`` stamped with that observation's time; execute
its points one per 20 Hz control step (or a no-op step on timeout, counted); repeat until
LIBERO reports success or the suite's step limit. Results are therefore identical whether a
step takes 5 ms or 300 ms of wall time.

Episode events (start / success / timeout) go to ``episode_events`` as DiagnosticStatus
(message = event; values = suite, task_id, init_state, seed, steps, instruction, no-op steps).
``/diagnostics`` (each wall second): the episode, sim time, no-op steps, refused and clipped
actions, callback errors. Topic names, types and QoS: ``vla_steering.contract``.
Services ``~/reset`` (start an episode from the ``task_id``, ``init_state`` and ``seed`` parameters,
which can be set live) and ``~/next_episode`` (the next init state) are std_srvs/Trigger; without them,
episodes run from ``init_state`` on, one init state after another — or, with ``autostart`` false,
only when ``~/reset`` asks (the bridge idles between episodes).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from sim_bridge.libero_env import (
    ARM_JOINTS,
    GRIPPER_JOINTS,
    NO_OP,
    ActionError,
    LiberoEpisodes,
    SimObservation,
    check_action,
)
from vla_steering import contract
from vla_steering_node import process
from vla_steering_node.conversions import (
    InputError,
    diagnostics_message,
    episode_event_message,
    joint_state_message,
    pose_message,
    qos_profile,
    rgb_to_image,
    trajectory_actions,
)


def sim_stamp(seconds: float) -> Time:
    nanoseconds = int(round(seconds * 1e9))
    return Time(sec=nanoseconds // 10**9, nanosec=nanoseconds % 10**9)


class SimBridge(Node):
    def __init__(self) -> None:
        super().__init__("sim_bridge")
        read_only = ParameterDescriptor(read_only=True)
        self.declare_parameter("suite", "libero_spatial", read_only)
        self.declare_parameter("task_id", 0, ParameterDescriptor(description="task; applies at ~/reset"))
        self.declare_parameter("init_state", 0, ParameterDescriptor(
            description="init state (0-49) of the first episode, and of the episode ~/reset starts"))
        self.declare_parameter("episodes", 1, ParameterDescriptor(
            description="episodes to run (init states init_state, init_state+1, ...); 0 = until shut down"))
        self.declare_parameter("max_steps", 0, ParameterDescriptor(description="0 = the suite's limit"))
        self.declare_parameter("image_size", 256, read_only)
        self.declare_parameter("seed", 7, ParameterDescriptor(
            description="seeds the simulation at every episode's start; a set applies at ~/reset"))
        self.declare_parameter("autostart", True, ParameterDescriptor(
            read_only=True, description="false: run an episode only when ~/reset asks, idle between episodes"))
        self.declare_parameter("action_timeout_s", 30.0, ParameterDescriptor(
            description="wall seconds to wait for an action before a no-op step"))
        self.declare_parameter("video_dir", "", ParameterDescriptor(description="write an MP4 per episode here"))
        self.declare_parameter("resend_s", 1.0, ParameterDescriptor(
            description="wall seconds between re-sends of an unanswered observation"))

        self.sim = LiberoEpisodes(self.get_parameter("suite").value, self.get_parameter("task_id").value,
                                  self.get_parameter("image_size").value, self.get_parameter("seed").value)

        def publisher(kind: type, topic: contract.Topic):
            return self.create_publisher(kind, topic.name, qos_profile(topic))

        self.clock_pub = publisher(Clock, contract.CLOCK)
        self.images = {name: publisher(Image, contract.camera(name)) for name in contract.CAMERAS}
        self.joints_pub = publisher(JointState, contract.JOINT_STATES)
        self.pose_pub = publisher(PoseStamped, contract.EE_POSE)
        self.instruction_pub = publisher(String, contract.INSTRUCTION)
        self.events_pub = publisher(DiagnosticStatus, contract.EPISODE_EVENTS)
        self.diagnostics_pub = publisher(DiagnosticArray, contract.DIAGNOSTICS)
        self.create_subscription(JointTrajectory, contract.ACTION_CHUNK.name, self.on_action,
                                 qos_profile(contract.ACTION_CHUNK))
        self.create_timer(1.0, self.publish_diagnostics)  # wall time: the bridge makes sim time itself
        self.create_service(Trigger, "~/reset", self.on_reset)
        self.create_service(Trigger, "~/next_episode", self.on_next)
        self._actions: dict[tuple[int, int], JointTrajectory] = {}
        self._action_arrived = threading.Condition()
        self._restart: int | None = None
        self.no_op_steps = 0
        self.clipped_actions = 0
        self.rejected_actions = 0
        self.callback_errors = 0
        self.last_problem = ""

    # ---------------------------------------------------------------- callbacks
    def on_action(self, msg: JointTrajectory) -> None:
        with self._action_arrived:
            self._actions[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            self._action_arrived.notify_all()

    def on_reset(self, request, response):
        task, init_state = self.get_parameter("task_id").value, self.get_parameter("init_state").value
        if not 0 <= task < self.sim.suite.n_tasks or not 0 <= init_state < len(self.sim.init_states):
            response.success = False
            response.message = (f"task_id {task} / init_state {init_state} out of range "
                                f"(0..{self.sim.suite.n_tasks - 1} / 0..{len(self.sim.init_states) - 1})")
            return response
        self._restart = init_state
        response.success, response.message = True, f"starting task {task} init state {init_state}"
        return response

    def on_next(self, request, response):
        self._restart = (self.sim.init_state + 1) % len(self.sim.init_states)
        response.success, response.message = True, f"starting init state {self._restart}"
        return response

    # ---------------------------------------------------------------- publishing
    def publish_state(self, obs: SimObservation, with_images: bool) -> Time:
        stamp = sim_stamp(self.sim.sim_time_s)
        self.clock_pub.publish(Clock(clock=stamp))
        self.pose_pub.publish(pose_message(obs.eef_pos, obs.eef_quat_xyzw, stamp, "world"))
        self.joints_pub.publish(joint_state_message([*ARM_JOINTS, *GRIPPER_JOINTS],
                                                    [*obs.arm_joints.tolist(), *obs.gripper_joints.tolist()], stamp))
        if with_images:
            self.images["wrist"].publish(rgb_to_image(obs.wrist, stamp, "wrist_camera"))
            self.images["agentview"].publish(rgb_to_image(obs.agentview, stamp, "agentview_camera"))
        return stamp

    def event(self, name: str) -> None:
        values = {"suite": self.sim.suite_name, "task_id": self.sim.task_id, "init_state": self.sim.init_state,
                  "seed": self.sim.seed, "steps": self.sim.steps, "sim_time_s": f"{self.sim.sim_time_s:.2f}",
                  "instruction": self.sim.instruction, "no_op_steps": self.no_op_steps,
                  "clipped_actions": self.clipped_actions, "rejected_actions": self.rejected_actions}
        self.events_pub.publish(episode_event_message(name, self.sim.suite_name, values))
        self.get_logger().info(f"episode {name}: task {self.sim.task_id} init {self.sim.init_state} "
                               f"after {self.sim.steps} steps")

    def publish_diagnostics(self) -> None:
        """The bridge's state on /diagnostics, once a wall second: episode, sim time, what was refused."""
        values = {"suite": self.sim.suite_name, "task_id": self.sim.task_id, "init_state": self.sim.init_state,
                  "steps": self.sim.steps, "sim_time_s": f"{self.sim.sim_time_s:.2f}",
                  "no_op_steps": self.no_op_steps, "clipped_actions": self.clipped_actions,
                  "rejected_actions": self.rejected_actions, "callback_errors": self.callback_errors}
        problems = self.no_op_steps + self.rejected_actions + self.callback_errors
        self.diagnostics_pub.publish(diagnostics_message(
            f"{self.get_name()}: simulation", self.sim.suite_name,
            DiagnosticStatus.WARN if problems else DiagnosticStatus.OK, self.last_problem or "ok", values,
            sim_stamp(self.sim.sim_time_s)))

    def on_callback_error(self, error: Exception) -> None:
        self.callback_errors += 1
        self.last_problem = f"a callback failed: {type(error).__name__}: {error}"

    # ---------------------------------------------------------------- the loop
    def wait_action(self, obs: SimObservation, stamp: Time) -> np.ndarray | None:
        """The chunk answering the observation stamped ``stamp``; the observation is sent again every
        ``resend_s`` meanwhile (camera topics are best effort, and the policy may still be starting)."""
        key = (stamp.sec, stamp.nanosec)
        start = time.monotonic()
        deadline = start + self.get_parameter("action_timeout_s").value
        every = self.get_parameter("resend_s").value
        resend = start + every
        with self._action_arrived:
            while key not in self._actions and rclpy.ok() and time.monotonic() < deadline:
                self._action_arrived.wait(0.05)
                if time.monotonic() > resend:
                    self.publish_state(obs, with_images=True)
                    resend += every
            msg = self._actions.pop(key, None)
            self._actions.clear()  # anything else is stale
        if msg is None:
            return None
        try:
            return trajectory_actions(msg)
        except InputError as error:  # refused and counted; the sim still advances (one no-op step)
            self.rejected_actions += 1
            self.last_problem = f"action chunk refused: {error}"
            self.get_logger().warning(f"action chunk refused: {error}; no-op step", throttle_duration_sec=2.0)
            return NO_OP[None]

    def run_episode(self, init_state: int) -> str:
        self.no_op_steps = self.clipped_actions = self.rejected_actions = 0
        obs = self.sim.reset(init_state, self.get_parameter("seed").value)
        limit = self.get_parameter("max_steps").value or self.sim.max_steps
        # sim time starts again at 0 before the episode's first message: a recorder on sim time (kept across
        # episodes) logs the instruction and the start event at the episode's time, not at the last one's end
        self.clock_pub.publish(Clock(clock=sim_stamp(self.sim.sim_time_s)))
        self.instruction_pub.publish(String(data=self.sim.instruction))
        self.event(contract.EPISODE_STARTED)
        video = self.open_video()
        while rclpy.ok():
            stamp = self.publish_state(obs, with_images=True)
            chunk = self.wait_action(obs, stamp)
            if chunk is None:
                self.no_op_steps += 1
                self.last_problem = f"no action for t={self.sim.sim_time_s:.2f}s"
                self.get_logger().warning(f"no action for t={self.sim.sim_time_s:.2f}s: no-op step",
                                          throttle_duration_sec=5.0)
                chunk = NO_OP[None]
            for index, row in enumerate(chunk):
                try:
                    action, clipped = check_action(row)
                except ActionError as error:
                    self.rejected_actions += 1
                    self.last_problem = f"action refused: {error}"
                    self.get_logger().warning(f"action refused: {error}; no-op step", throttle_duration_sec=2.0)
                    action, clipped = NO_OP, False
                self.clipped_actions += clipped
                if clipped:
                    self.get_logger().warning("action outside [-1, 1] clipped", throttle_duration_sec=2.0)
                obs, success = self.sim.step(action)
                if video is not None:
                    video.write(obs.agentview[..., ::-1])
                if self._restart is not None:
                    if video is not None:
                        video.release()
                    return "interrupted"
                if success or self.sim.steps >= limit:
                    self.publish_state(obs, with_images=False)
                    self.event(contract.EPISODE_SUCCESS if success else contract.EPISODE_TIMEOUT)
                    if video is not None:
                        video.release()
                    return "success" if success else "timeout"
                if index < len(chunk) - 1:
                    self.publish_state(obs, with_images=False)
        return "shutdown"

    def open_video(self):
        directory = self.get_parameter("video_dir").value
        if not directory:
            return None
        import cv2

        Path(directory).mkdir(parents=True, exist_ok=True)
        name = f"{self.sim.suite_name}_task{self.sim.task_id}_init{self.sim.init_state}.mp4"
        size = self.get_parameter("image_size").value
        return cv2.VideoWriter(str(Path(directory) / name), cv2.VideoWriter_fourcc(*"mp4v"), 20, (size, size))

    def requested_episode(self) -> int:
        """The init state ``~/reset`` asked for, with the simulator of its task."""
        init_state, self._restart = self._restart, None
        task = self.get_parameter("task_id").value
        if task != self.sim.task_id:  # another task is another simulator
            self.sim.close()
            self.sim = LiberoEpisodes(self.sim.suite_name, task, self.get_parameter("image_size").value,
                                      self.get_parameter("seed").value)
        return init_state

    def wait_for_reset(self) -> bool:
        """Idle until ``~/reset`` asks for an episode (True) or the node shuts down (False)."""
        while rclpy.ok() and self._restart is None:
            time.sleep(0.02)
        return self._restart is not None

    def run(self) -> None:
        episodes = self.get_parameter("episodes").value
        autostart = self.get_parameter("autostart").value
        init_state = self.get_parameter("init_state").value
        if not autostart:
            if not self.wait_for_reset():
                return
            init_state = self.requested_episode()
        done = 0
        while rclpy.ok() and (episodes == 0 or done < episodes):
            outcome = self.run_episode(init_state)
            if outcome == "interrupted":
                self.event(contract.EPISODE_INTERRUPTED)
                init_state = self.requested_episode()
                continue
            done += 1
            if episodes and done >= episodes:
                return
            if autostart:
                init_state = (init_state + 1) % len(self.sim.init_states)
            elif self.wait_for_reset():
                init_state = self.requested_episode()


def main(args=None) -> None:
    process.run(SimBridge, SimBridge.run, (ImportError, ValueError), "sim_bridge",
                cleanup=lambda node: node.sim.close(), args=args, on_error=SimBridge.on_callback_error)


if __name__ == "__main__":
    main()
