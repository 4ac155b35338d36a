"""LIBERO observation conventions (as in openpi's and OpenVLA's LIBERO evaluations).

* images: agent-view and wrist cameras, rendered upside down by LIBERO and flipped
  on both axes before use; resized to the model's input size;
* state: ``[eef_pos (3), axis_angle (3), gripper_qpos (2)]`` (8-D), the
  end-effector orientation converted from robosuite's (x, y, z, w) quaternion.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) of a unit quaternion in robosuite's (x, y, z, w) order."""
    q = np.asarray(quat_xyzw, np.float64)
    w = np.clip(q[3], -1.0, 1.0)
    sin_half = np.sqrt(max(1.0 - w * w, 0.0))
    if np.isclose(sin_half, 0.0):
        return np.zeros(3)
    return q[:3] * (2.0 * np.arccos(w) / sin_half)


def libero_state(eef_pos: np.ndarray, eef_quat_xyzw: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """The 8-D LIBERO state vector."""
    return np.concatenate([eef_pos, quat_to_axis_angle(eef_quat_xyzw), gripper_qpos]).astype(np.float32)


def flip_upright(image: np.ndarray) -> np.ndarray:
    """LIBERO renders upside down: rotate 180 degrees (flip both axes)."""
    return np.ascontiguousarray(image[::-1, ::-1])


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, bilinear with antialiasing."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    tensor = torch.tensor(image).permute(2, 0, 1)[None].float()  # a copy: ROS buffers are read-only
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
