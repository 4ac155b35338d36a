"""The research metrics, from a recorded episode; comparisons against a baseline.

An :class:`Episode` is what a bag holds about one episode: the end-effector trajectory (sim
time, position), the executed action chunks, the outcome event and the steering applied.
Metrics per episode: success, length, EE height (mean / max / final), EE speed and path
length, per-axis displacement, gripper events, and — because steering can change how long an
episode lasts — length-independent ones: per-step rates and values over a fixed horizon.
Comparisons give mean ± 95% CI of steered − baseline over paired episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_steering import contract


@dataclass
class Episode:
    times_s: np.ndarray  # (N,) sim time of each EE pose
    ee_pos: np.ndarray  # (N, 3)
    actions: np.ndarray  # (M, 7) every action row published (chunks concatenated)
    outcome: str = ""  # success | timeout | "" (unfinished)
    steps: int = 0
    info: dict = field(default_factory=dict)  # suite, task_id, init_state, seed, instruction
    steering: list[dict] = field(default_factory=list)  # per action chunk: {"up": 2.0, ...}
    latencies_ms: list[float] = field(default_factory=list)


def episode_from_bag(path: str | Path) -> Episode:
    """Read one episode's bag (as written by bag_recorder)."""
    from vla_steering.bags import read_bag

    times, positions, actions, steering, latencies = [], [], [], [], []
    outcome, steps, info = "", 0, {}
    pose, action, steering_state, events, diagnostics = (t.in_bag for t in (
        contract.EE_POSE, contract.ACTION_CHUNK, contract.STEERING_STATE, contract.EPISODE_EVENTS,
        contract.DIAGNOSTICS))
    for m in read_bag(path, [pose, action, steering_state, events, diagnostics]):
        msg = m.message
        if m.topic == pose:
            times.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
            p = msg.pose.position
            positions.append((p.x, p.y, p.z))
        elif m.topic == action:
            actions += [list(point.positions) for point in msg.points]
        elif m.topic == steering_state:
            steering.append(contract.strengths_from(contract.key_values(msg.status[0].values)))
        elif m.topic == events:
            values = contract.key_values(msg.values)
            info = {k: values[k] for k in contract.EPISODE_INFO_KEYS if k in values}
            if msg.message in contract.EPISODE_OUTCOMES:
                outcome, steps = msg.message, int(values.get("steps", 0))
        elif m.topic == diagnostics:
            for status in msg.status:
                values = contract.key_values(status.values)
                if values.get(contract.LATENCY_KEY, "nan") != "nan":
                    latencies.append(float(values[contract.LATENCY_KEY]))
    order = np.argsort(times, kind="stable")
    t = np.asarray(times)[order]
    pos = np.asarray(positions, np.float64).reshape(-1, 3)[order]
    keep = np.concatenate([[True], np.diff(t) > 0]) if len(t) else np.zeros(0, bool)  # one pose per sim time
    actions = np.asarray(actions, np.float64).reshape(-1, len(contract.ACTION_DIMS))
    return Episode(t[keep], pos[keep], actions, outcome, steps, info, steering, latencies)


def gripper_events(actions: np.ndarray) -> int:
    """Number of gripper command changes (open <-> close)."""
    if len(actions) == 0:
        return 0
    signs = np.sign(actions[:, 6])
    signs = signs[signs != 0]
    return int(np.count_nonzero(np.diff(signs)))


def episode_metrics(episode: Episode, horizon_steps: int = 20, control_period_s: float = 0.05) -> dict:
    """The metrics of one episode (NaN where the episode has no trajectory)."""
    pos, t = episode.ee_pos, episode.times_s
    out: dict = {"success": episode.outcome == "success", "outcome": episode.outcome, "steps": episode.steps}
    if len(pos) < 2:
        return out
    step_lengths = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    duration = t[-1] - t[0]
    z = pos[:, 2]
    out.update(
        height_mean=float(z.mean()), height_max=float(z.max()), height_final=float(z[-1]),
        path_length=float(step_lengths.sum()),
        speed_mean=float(step_lengths.sum() / duration) if duration > 0 else float("nan"),
        displacement_x=float(pos[-1, 0] - pos[0, 0]), displacement_y=float(pos[-1, 1] - pos[0, 1]),
        displacement_z=float(pos[-1, 2] - pos[0, 2]),
        dz_per_step=float((pos[-1, 2] - pos[0, 2]) / max(len(pos) - 1, 1)),
        gripper_events=gripper_events(episode.actions),
        latency_ms=float(np.median(episode.latencies_ms)) if episode.latencies_ms else float("nan"),
    )
    window = t <= t[0] + horizon_steps * control_period_s + 1e-9  # a fixed horizon, whatever the length
    out[f"height_gain_{horizon_steps}"] = float(z[window][-1] - z[0])
    out[f"path_length_{horizon_steps}"] = float(step_lengths[: int(window.sum()) - 1].sum())
    return out


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% normal-approximation confidence interval."""
    x = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return float(x.mean()), float(half)


def paired_difference(steered: Sequence[dict], baseline: Sequence[dict], key: str) -> tuple[float, float]:
    """Mean ± CI of steered[key] − baseline[key] over episodes paired by position."""
    if len(steered) != len(baseline):
        raise ValueError(f"pair {len(steered)} steered episodes with {len(baseline)} baseline ones")
    return mean_ci([s[key] - b[key] for s, b in zip(steered, baseline) if key in s and key in b])
