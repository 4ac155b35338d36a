"""The wire contract: every topic the nodes, bridges, recorder and bag readers share, in one table.

A topic has a name (relative to the node's namespace unless it starts with ``/``), a message type,
and a QoS (``sensor``: best effort, keep last; ``reliable``; ``latched``: reliable, transient local,
so a late subscriber gets the last messages). Bags store resolved names (``/robot1/ee_pose``) and
read back relative to the run's namespace, as :attr:`Topic.in_bag` (``/ee_pose``).

Also here: the action layout and its period, and the key formats of ``steering_state`` and the
episode events, with the decoders the ROS-free bag readers use. The ROS side (QoS profiles,
message encode / decode) is ``vla_steering_node.conversions``; this module needs no ROS.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Qos = Literal["sensor", "reliable", "latched"]


@dataclass(frozen=True)
class Topic:
    name: str
    msgtype: str  # package/msg/Type
    qos: Qos
    depth: int

    @property
    def in_bag(self) -> str:
        """The name a bag reader gives it (relative to the recorded run's namespace)."""
        return self.name if self.name.startswith("/") else "/" + self.name

    def entry(self) -> str:
        """``name:package/msg/Type``, the recorder's ``topics`` parameter format."""
        return f"{self.name}:{self.msgtype}"


CAMERAS = ("agentview", "wrist")  # the bridges' cameras; the policy's primary camera is the first


def camera(name: str) -> Topic:
    return Topic(f"camera/{name}/image_raw", "sensor_msgs/msg/Image", "sensor", 5)


def compressed_camera(name: str) -> Topic:
    return Topic(f"camera/{name}/image_raw/compressed", "sensor_msgs/msg/CompressedImage", "sensor", 5)


JOINT_STATES = Topic("joint_states", "sensor_msgs/msg/JointState", "sensor", 5)
EE_POSE = Topic("ee_pose", "geometry_msgs/msg/PoseStamped", "sensor", 5)
INSTRUCTION = Topic("instruction", "std_msgs/msg/String", "latched", 1)
ACTION_CHUNK = Topic("action_chunk", "trajectory_msgs/msg/JointTrajectory", "reliable", 10)
STEERING_STATE = Topic("steering_state", "diagnostic_msgs/msg/DiagnosticArray", "reliable", 10)
EPISODE_EVENTS = Topic("episode_events", "diagnostic_msgs/msg/DiagnosticStatus", "latched", 100)
DIAGNOSTICS = Topic("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "reliable", 10)
CLOCK = Topic("/clock", "rosgraph_msgs/msg/Clock", "reliable", 10)

RECORDED = (*(camera(c) for c in CAMERAS), JOINT_STATES, EE_POSE, INSTRUCTION, ACTION_CHUNK, STEERING_STATE,
            EPISODE_EVENTS, DIAGNOSTICS)  # what bag_recorder records by default
_BY_BAG_NAME = {t.in_bag: t for t in (*RECORDED, *(compressed_camera(c) for c in CAMERAS), CLOCK)}


def by_bag_name(name: str) -> Topic | None:
    """The contract's topic behind a (namespace-relative) bag topic name, or None."""
    return _BY_BAG_NAME.get(name)


CONTROL_PERIOD_S = 0.05  # 20 Hz: the points of an action chunk are this far apart
ACTION_DIMS = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")  # LIBERO's end-effector delta layout

# episode_events: DiagnosticStatus(message=event, values=EPISODE_KEYS)
EPISODE_STARTED, EPISODE_SUCCESS, EPISODE_TIMEOUT, EPISODE_INTERRUPTED = "start", "success", "timeout", "interrupted"
EPISODE_OUTCOMES = (EPISODE_SUCCESS, EPISODE_TIMEOUT)
EPISODE_INFO_KEYS = ("suite", "task_id", "init_state", "seed", "instruction")

# steering_state: DiagnosticArray with one status; values enabled, mode, version, strength.<concept>
STRENGTH_PREFIX = "strength."
LATENCY_KEY = "inference_latency_ms_p50"  # in the steering node's /diagnostics


def key_values(values: Iterable) -> dict[str, str]:
    """A DiagnosticStatus's values (ROS or rosbags messages) as a dict."""
    return {kv.key: kv.value for kv in values}


def strengths_from(values: dict[str, str]) -> dict[str, float]:
    """The concept strengths in a steering_state status's values."""
    return {k.removeprefix(STRENGTH_PREFIX): float(v) for k, v in values.items() if k.startswith(STRENGTH_PREFIX)}
