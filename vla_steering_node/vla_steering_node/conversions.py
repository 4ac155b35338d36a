"""The ROS side of the wire contract (:mod:`vla_steering.contract`): each topic's QoS profile and
message class, and one encoder / decoder per message (ROS 2 messages <-> the core's arrays).
Every decoder raises InputError with a reason. The README's "Topic contract" describes it.
"""

from __future__ import annotations

import importlib
import io

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_steering import contract
from vla_steering.contract import Topic
from vla_steering.policies import ActionChunk
from vla_steering.policies.libero import libero_state
from vla_steering.steering import SteeringState

MIN_IMAGE_SIDE = 8
MAX_IMAGE_SIDE = 4096


MAX_JOINTS = 64  # more positions than any arm has: a malformed message
MAX_INSTRUCTION_CHARS = 1000  # an instruction is a sentence; inference cost grows with its length


class InputError(ValueError):
    """A message the node must not act on."""


def qos_profile(topic: Topic, depth: int | None = None) -> QoSProfile:
    """The topic's QoS (``depth`` overrides its history depth, e.g. for a recorder that must keep up)."""
    reliability = ReliabilityPolicy.BEST_EFFORT if topic.qos == "sensor" else ReliabilityPolicy.RELIABLE
    durability = DurabilityPolicy.TRANSIENT_LOCAL if topic.qos == "latched" else DurabilityPolicy.VOLATILE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth or topic.depth, reliability=reliability,
                      durability=durability)


def message_class(msgtype: str) -> type:
    """``package/msg/Type`` -> the message class."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8 or bgr8) -> (H, W, 3) uint8 RGB."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise InputError(f"image encoding {msg.encoding!r} is not supported; publish rgb8 or bgr8")
    if not (MIN_IMAGE_SIDE <= msg.height <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= msg.width <= MAX_IMAGE_SIDE):
        raise InputError(f"image size {msg.width}x{msg.height} is outside {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} pixels")
    if msg.step < msg.width * 3 or len(msg.data) != msg.step * msg.height:
        raise InputError(f"image data ({len(msg.data)} bytes, step {msg.step}) is not the "
                         f"{msg.width}x{msg.height} pixels of 3 bytes its header says")
    rows = np.frombuffer(bytes(msg.data), np.uint8, count=msg.step * msg.height).reshape(msg.height, msg.step)
    image = rows[:, : msg.width * 3].reshape(msg.height, msg.width, 3)
    return np.ascontiguousarray(image[..., ::-1] if msg.encoding == "bgr8" else image)


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png) -> (H, W, 3) uint8 RGB."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        image = np.asarray(PILImage.open(io.BytesIO(bytes(msg.data))).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"compressed image ({msg.format!r}) could not be decoded: {error}") from error
    if not (MIN_IMAGE_SIDE <= min(image.shape[:2]) and max(image.shape[:2]) <= MAX_IMAGE_SIDE):
        raise InputError(f"image size {image.shape[1]}x{image.shape[0]} is out of range")
    return image


def rgb_to_image(rgb: np.ndarray, stamp: Time, frame_id: str = "camera") -> Image:
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(rgb, np.uint8).tobytes()
    return msg


def joint_positions(msg: JointState) -> np.ndarray:
    """Positions as a finite float vector (NaN / inf, none or more than MAX_JOINTS refused)."""
    positions = np.asarray(msg.position, np.float64)
    if positions.size == 0:
        raise InputError("joint state has no positions")
    if positions.size > MAX_JOINTS:
        raise InputError(f"joint state has {positions.size} positions; at most {MAX_JOINTS}")
    if len(msg.name) not in (0, positions.size):
        raise InputError(f"joint state has {len(msg.name)} names for {positions.size} positions")
    if not np.all(np.isfinite(positions)):
        raise InputError(f"joint state has non-finite positions: {positions.tolist()}")
    return positions.astype(np.float32)


def pose_state(pose: PoseStamped, joints: JointState, gripper_joints: list[str]) -> np.ndarray:
    """LIBERO's 8-D state from the EE pose and the two gripper finger joints."""
    p, q = pose.pose.position, pose.pose.orientation
    quat = np.array([q.x, q.y, q.z, q.w], np.float64)
    position = np.array([p.x, p.y, p.z], np.float64)
    if not (np.all(np.isfinite(quat)) and np.all(np.isfinite(position))):
        raise InputError("end-effector pose is not finite")
    norm = np.linalg.norm(quat)
    if not 0.9 < norm < 1.1:
        raise InputError(f"end-effector orientation is not a unit quaternion (norm {norm:.3f})")
    names = list(joints.name)
    missing = [j for j in gripper_joints if j not in names]
    if missing:
        raise InputError(f"joint state lacks the gripper joints {missing}")
    fingers = np.array([joints.position[names.index(j)] for j in gripper_joints], np.float64)
    if not np.all(np.isfinite(fingers)):
        raise InputError("gripper joint positions are not finite")
    return libero_state(position, quat / norm, fingers)


def chunk_to_trajectory(chunk: ActionChunk, stamp: Time, period_s: float) -> JointTrajectory:
    """The action chunk as JointTrajectory: one point per step, joint_names = action dimensions,
    header.frame_id = the action space's name, time_from_start = (i + 1) control periods."""
    msg = JointTrajectory()
    msg.header.stamp = stamp
    msg.header.frame_id = chunk.space.name
    msg.joint_names = list(chunk.space.dims)
    for i, row in enumerate(chunk.actions):
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in row]
        nanoseconds = int(round((i + 1) * period_s * 1e9))
        point.time_from_start = Duration(sec=nanoseconds // 10**9, nanosec=nanoseconds % 10**9)
        msg.points.append(point)
    return msg


def steering_state_message(state: SteeringState | None, stamp: Time, node_name: str) -> DiagnosticArray:
    """The steering applied to one action, stamped like the action (for bag analysis)."""
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    status = DiagnosticStatus(name=f"{node_name}: steering", hardware_id="policy")
    if state is None:
        status.message = "no steering engine"
        status.values = [KeyValue(key="enabled", value="false")]
    else:
        status.message = ", ".join(f"{k}={v:g}" for k, v in state.strengths.items()) or "off"
        status.values = [KeyValue(key="enabled", value=str(state.enabled).lower()),
                         KeyValue(key="mode", value=state.mode),
                         KeyValue(key="version", value=str(state.version))]
        status.values += [KeyValue(key=contract.STRENGTH_PREFIX + k, value=repr(float(v)))
                          for k, v in state.strengths.items()]
    msg.status = [status]
    return msg


def diagnostics_message(name: str, hardware_id: str, level: bytes, message: str, values: dict,
                        stamp: Time) -> DiagnosticArray:
    """One node's status for /diagnostics (values as strings)."""
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, level=level, message=message,
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg


def episode_event_message(event: str, suite: str, values: dict) -> DiagnosticStatus:
    """An episode event (``contract.EPISODE_*``) with its values (``contract.EPISODE_INFO_KEYS`` and counts)."""
    return DiagnosticStatus(name="episode", message=event, hardware_id=suite,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def joint_state_message(names: list[str], positions: list[float], stamp: Time) -> JointState:
    msg = JointState(name=list(names), position=[float(p) for p in positions])
    msg.header.stamp = stamp
    return msg


def pose_message(position, quat_xyzw, stamp: Time, frame_id: str) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    p, o = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in position)
    o.x, o.y, o.z, o.w = (float(v) for v in quat_xyzw)
    return msg


def trajectory_actions(msg: JointTrajectory) -> np.ndarray:
    """(T, D) actions back from a JointTrajectory (for bridges and bag analysis).

    Raises:
        InputError: a chunk with no points, or with points of different lengths.
    """
    rows = [list(p.positions) for p in msg.points]
    widths = sorted({len(row) for row in rows})
    if not rows or widths == [0]:
        raise InputError("action chunk has no points (or only empty ones)")
    if len(widths) != 1:
        raise InputError(f"action chunk has points of lengths {widths}; expected one length")
    return np.array(rows, np.float64)
