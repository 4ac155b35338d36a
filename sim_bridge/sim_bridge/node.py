"""sim_bridge: LIBERO in lockstep on simulation time, speaking the vla-steer topic contract.

Loop (main thread): publish /clock = sim time, then joint_states, ee_pose and, when a new
action is needed, both camera images, all stamped with sim time; wait (wall time, at most
``action_timeout_s``) for an ``action_chunk`` stamped with that observation's time; execute
its points one per 20 Hz control step (or a no-op step on timeout, counted); repeat until
LIBERO reports success or the suite's step limit. Results are therefore identical whether a
step takes 5 ms or 300 ms of wall time.

Episode events (start / success / timeout) go to ``episode_events`` as DiagnosticStatus
(message = event; values = suite, task_id, init_state, seed, steps, instruction, no-op steps).
Services ``~/reset`` (start an episode from the ``task_id`` and ``init_state`` parameters, which
can be set live) and ``~/next_episode`` (the next init state) are std_srvs/Trigger; without them,
episodes run from ``init_state`` on, one init state after another.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
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
from vla_steering_node import process
from vla_steering_node.conversions import InputError, rgb_to_image, trajectory_actions

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
EVENTS_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)


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
        self.declare_parameter("seed", 7, read_only)
        self.declare_parameter("action_timeout_s", 30.0, ParameterDescriptor(
            description="wall seconds to wait for an action before a no-op step"))
        self.declare_parameter("video_dir", "", ParameterDescriptor(description="write an MP4 per episode here"))

        self.sim = LiberoEpisodes(self.get_parameter("suite").value, self.get_parameter("task_id").value,
                                  self.get_parameter("image_size").value, self.get_parameter("seed").value)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.images = {name: self.create_publisher(Image, f"camera/{name}/image_raw", qos_profile_sensor_data)
                       for name in ("agentview", "wrist")}
        self.joints_pub = self.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.pose_pub = self.create_publisher(PoseStamped, "ee_pose", qos_profile_sensor_data)
        self.instruction_pub = self.create_publisher(String, "instruction", LATCHED)
        self.events_pub = self.create_publisher(DiagnosticStatus, "episode_events", EVENTS_QOS)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointTrajectory, "action_chunk", self.on_action, 10)
        self.create_service(Trigger, "~/reset", self.on_reset)
        self.create_service(Trigger, "~/next_episode", self.on_next)
        self._actions: dict[tuple[int, int], JointTrajectory] = {}
        self._action_arrived = threading.Condition()
        self._restart: int | None = None
        self.no_op_steps = 0
        self.clipped_actions = 0
        self.rejected_actions = 0

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
        joints = JointState(name=[*ARM_JOINTS, *GRIPPER_JOINTS],
                            position=[*obs.arm_joints.tolist(), *obs.gripper_joints.tolist()])
        joints.header.stamp = stamp
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, "world"
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = obs.eef_pos.tolist()
        q = obs.eef_quat_xyzw
        pose.pose.orientation.x, pose.pose.orientation.y = float(q[0]), float(q[1])
        pose.pose.orientation.z, pose.pose.orientation.w = float(q[2]), float(q[3])
        self.pose_pub.publish(pose)
        self.joints_pub.publish(joints)
        if with_images:
            self.images["wrist"].publish(rgb_to_image(obs.wrist, stamp, "wrist_camera"))
            self.images["agentview"].publish(rgb_to_image(obs.agentview, stamp, "agentview_camera"))
        return stamp

    def event(self, name: str) -> None:
        status = DiagnosticStatus(name="episode", message=name, hardware_id=self.sim.suite_name)
        values = {"suite": self.sim.suite_name, "task_id": self.sim.task_id, "init_state": self.sim.init_state,
                  "seed": self.sim.seed, "steps": self.sim.steps, "sim_time_s": f"{self.sim.sim_time_s:.2f}",
                  "instruction": self.sim.instruction, "no_op_steps": self.no_op_steps,
                  "clipped_actions": self.clipped_actions, "rejected_actions": self.rejected_actions}
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        self.events_pub.publish(status)
        self.get_logger().info(f"episode {name}: task {self.sim.task_id} init {self.sim.init_state} "
                               f"after {self.sim.steps} steps")

    # ---------------------------------------------------------------- the loop
    def wait_action(self, obs: SimObservation, stamp: Time) -> np.ndarray | None:
        """The chunk answering the observation stamped ``stamp``; the observation is sent again each
        second meanwhile (camera topics are best effort, and the policy may still be starting)."""
        key = (stamp.sec, stamp.nanosec)
        start = time.monotonic()
        deadline = start + self.get_parameter("action_timeout_s").value
        resend = start + 1.0
        with self._action_arrived:
            while key not in self._actions and rclpy.ok() and time.monotonic() < deadline:
                self._action_arrived.wait(0.05)
                if time.monotonic() > resend:
                    self.publish_state(obs, with_images=True)
                    resend += 1.0
            msg = self._actions.pop(key, None)
            self._actions.clear()  # anything else is stale
        if msg is None:
            return None
        try:
            return trajectory_actions(msg)
        except InputError as error:  # refused and counted; the sim still advances (one no-op step)
            self.rejected_actions += 1
            self.get_logger().warning(f"action chunk refused: {error}; no-op step", throttle_duration_sec=2.0)
            return NO_OP[None]

    def run_episode(self, init_state: int) -> str:
        self.no_op_steps = self.clipped_actions = self.rejected_actions = 0
        obs = self.sim.reset(init_state)
        limit = self.get_parameter("max_steps").value or self.sim.max_steps
        self.instruction_pub.publish(String(data=self.sim.instruction))
        self.event("start")
        video = self.open_video()
        while rclpy.ok():
            stamp = self.publish_state(obs, with_images=True)
            chunk = self.wait_action(obs, stamp)
            if chunk is None:
                self.no_op_steps += 1
                self.get_logger().warning(f"no action for t={self.sim.sim_time_s:.2f}s: no-op step",
                                          throttle_duration_sec=5.0)
                chunk = NO_OP[None]
            for index, row in enumerate(chunk):
                try:
                    action, clipped = check_action(row)
                except ActionError as error:
                    self.rejected_actions += 1
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
                    self.event("success" if success else "timeout")
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

    def run(self) -> None:
        episodes = self.get_parameter("episodes").value
        init_state = self.get_parameter("init_state").value
        done = 0
        while rclpy.ok() and (episodes == 0 or done < episodes):
            outcome = self.run_episode(init_state)
            if outcome == "interrupted":
                self.event("interrupted")
                init_state, self._restart = self._restart, None
                task = self.get_parameter("task_id").value
                if task != self.sim.task_id:  # another task is another simulator
                    self.sim.close()
                    self.sim = LiberoEpisodes(self.sim.suite_name, task, self.get_parameter("image_size").value,
                                              self.get_parameter("seed").value)
                continue
            done += 1
            init_state = (init_state + 1) % len(self.sim.init_states)


def main(args=None) -> None:
    process.run(SimBridge, SimBridge.run, (ImportError, ValueError), "sim_bridge",
                cleanup=lambda node: node.sim.close(), args=args)


if __name__ == "__main__":
    main()
