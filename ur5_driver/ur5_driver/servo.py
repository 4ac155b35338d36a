"""The UR5 servo loop without ROS: the plan, its interpolation, the watchdogs, the stops, the gripper.

:class:`ServoLoop` is what the driver node runs at the servo rate. The node hands it action
chunks (:meth:`ServoLoop.accept_chunk`, which refuses a malformed one with the reason and
leaves the plan as it was) and calls :meth:`ServoLoop.tick` once per period with a
:class:`Controller`, the typed link to the arm. A tick reads the arm and then sends exactly one
of: a ``servoL`` target through the :class:`~ur5_driver.safety.SafetyFilter`, a ``servoStop``,
or (idle) a kick of the controller's RTDE watchdog.

One safety state machine: the filter's velocity is reset exactly when a stream starts from rest
at the arm's actual pose, which every transition that ends a stream leads to:

* **start / connect / reconnect / resume**: a fresh stream from rest;
* **a protective or emergency stop, the control program not running**: the controller stops the
  arm itself; the plan is dropped and nothing is commanded until the condition clears (the
  condition is reported once, when it begins, even while idle, and again when it clears);
* **the end of the plan / the driver-side watchdog** (no action for ``action_timeout`` after the
  plan's last point): the filter brakes to rest within the limits, then ``servoStop``;
* **a refused chunk**: nothing changes; the stream goes on with the previous plan.

Within a stream a new chunk starts where the last command was, so position and velocity stay
continuous across chunks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ur5_driver.gripper import gripper_command
from ur5_driver.kinematics import rotation_matrix, rotation_vector
from ur5_driver.safety import SafetyFilter, SafetyLimits, UnsafeCommand, delta_to_target

PROTECTIVE_STOP_BIT, EMERGENCY_STOP_BIT = 2, 7
PLAYING = 2  # runtime_state of a running control program
AT_REST = 1e-6  # m/s and rad/s below which the commanded stream counts as stopped


class ChunkRefused(ValueError):
    """An action chunk the driver will not execute; the message says why."""


class Controller(Protocol):
    """The calls the servo loop makes to the arm (the node's link to ur_rtde provides them)."""

    def state(self) -> dict: ...

    def servo_l(self, pose: list[float], period: float, lookahead: float, gain: float) -> None: ...

    def servo_stop(self) -> None: ...

    def arm_watchdog(self, frequency_hz: float) -> None: ...

    def kick_watchdog(self) -> None: ...

    def grip(self, command: int) -> None: ...


@dataclass(frozen=True)
class ServoSettings:
    """Args:
        period: servo period (s).
        lookahead, gain: servoL's.
        translation_scale, rotation_scale: metres / radians per action unit per policy step.
        action_frame: ``base`` or ``tool``.
        action_timeout: stop after this long past the plan's last point without a new action.
        controller_watchdog: the controller stops the program after this long without a command.
        max_chunk_duration: a chunk whose points reach further ahead than this is refused.
        dry_run: no control interface (the node's controller logs the commands): the control program is
            not required to run and its watchdog is not armed.
        gripper: the gripper interface (``none`` sends nothing).
    """

    period: float
    lookahead: float = 0.1
    gain: float = 300.0
    translation_scale: float = 0.005
    rotation_scale: float = 0.02
    action_frame: str = "base"
    action_timeout: float = 0.1
    controller_watchdog: float = 0.25
    max_chunk_duration: float = 10.0
    dry_run: bool = False
    gripper: str = "none"


@dataclass(frozen=True)
class Plan:
    """TCP targets at absolute (monotonic) times, starting from ``origin`` at ``start``."""

    start: float
    origin: np.ndarray
    targets: tuple[np.ndarray, ...]
    times: tuple[float, ...]
    grips: tuple[int | None, ...]

    def at(self, now: float) -> np.ndarray:
        """The target for ``now``, interpolated between policy steps (the last one after the end)."""
        times, targets = (self.start, *self.times), (self.origin, *self.targets)
        if now >= times[-1]:
            return targets[-1]
        i = max(0, int(np.searchsorted(times, now, side="right")) - 1)
        w = (now - times[i]) / (times[i + 1] - times[i]) if times[i + 1] > times[i] else 1.0
        a, b = targets[i], targets[i + 1]
        start = rotation_matrix(a[3:])
        relative = rotation_vector(rotation_matrix(b[3:]) @ start.T)
        rotation = rotation_matrix(w * relative) @ start
        return np.concatenate([a[:3] + w * (b[:3] - a[:3]), rotation_vector(rotation)])

    def grip_at(self, now: float) -> int | None:
        return self.grips[min(int(np.searchsorted(self.times, now, side="right")), len(self.grips) - 1)]


def condition(state: dict, dry_run: bool) -> tuple[str, str] | None:
    """(counter, text) of what keeps the arm from being commanded, or None."""
    bits = int(state.get("bits", 0))
    if bits & (1 << EMERGENCY_STOP_BIT):
        return "safety_stops", "emergency stop: no motion commanded until it is released"
    if bits & (1 << PROTECTIVE_STOP_BIT):
        return "safety_stops", "protective stop: no motion commanded until ~/unlock_protective_stop"
    if not dry_run and state.get("runtime_state") != PLAYING:
        return "program_stops", ("the control program is not running (stopped on the pendant, by the controller's "
                                 "watchdog or by a fault): nothing commanded until ~/resume_control is called")
    return None


class ServoLoop:
    """Args:
        settings: timing, scaling, watchdogs.
        limits: the safety limits.
        report: called with (counter, text) for every event, once, when it happens.
    """

    COUNTERS = ("clamped", "refused", "watchdog_stops", "safety_stops", "program_stops", "gripper_errors",
                "reconnects", "errors")

    def __init__(self, settings: ServoSettings, limits: SafetyLimits, report: Callable[[str, str], None]):
        self.settings = settings
        self.safety = SafetyFilter(limits)
        self._report = report
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.lock = threading.Lock()  # chunks arrive from the executor thread
        self.plan: Plan | None = None
        self.state: dict = {}
        self.blocked: tuple[str, str] | None = None
        self.connected()

    # ---------------------------------------------------------------- transitions
    def report(self, counter: str, text: str) -> None:
        self.counts[counter] += 1
        self._report(counter, text)

    def connected(self) -> None:
        """A fresh link: nothing from before is replayed; a stream starts from rest; the watchdog is unarmed."""
        with self.lock:
            self.plan = None
        self.commanded: np.ndarray | None = None
        self.safety.reset()
        self.watchdog_armed = False
        self.grip_sent: int | None = None
        self.grip_time = 0.0
        self.state, self.blocked = {}, None

    def resumed(self) -> None:
        """The control program was uploaded again: it has no watchdog until the next tick arms it."""
        self.watchdog_armed = False

    def halt(self) -> None:
        """The stream ends at once (the controller stopped the arm): drop the plan, start from rest next."""
        with self.lock:
            self.plan = None
        self.commanded = None
        self.safety.reset()

    # ---------------------------------------------------------------- inputs
    def accept_chunk(self, points: Sequence[Sequence[float]], times: Sequence[float], now: float) -> bool:
        """Make a chunk of actions (rows of [dx dy dz droll dpitch dyaw (gripper)]) the plan.

        Returns False, changing nothing, while the arm cannot be commanded (not connected, or a stop
        that was reported when it began).

        Raises:
            ChunkRefused: a malformed chunk, with the reason; the plan is then unchanged.
        """
        if not self.state or self.blocked is not None:
            return False
        widths = {len(p) for p in points}
        if not points or len(widths) != 1:
            raise ChunkRefused(f"chunk has {len(points)} points of lengths {sorted(widths)}; expected one or more "
                               "points of one length")
        actions = np.asarray(points, np.float64)
        if actions.shape[1] < 6:
            raise ChunkRefused(f"points have {actions.shape[1]} values; expected 6 (7 with the gripper)")
        if not np.all(np.isfinite(actions)):
            raise ChunkRefused("chunk has non-finite values")
        times = np.asarray(times, np.float64)
        if len(times) != len(actions) or not np.all(np.isfinite(times)) or times[0] < 0 or np.any(np.diff(times) < 0):
            raise ChunkRefused(f"time_from_start must be finite, non-negative and not decrease ({times.tolist()})")
        if times[-1] > self.settings.max_chunk_duration:
            raise ChunkRefused(f"chunk reaches {times[-1]:.1f} s ahead; at most {self.settings.max_chunk_duration} s "
                               "(max_chunk_duration_s)")
        actions = np.clip(actions, -1.0, 1.0)
        s = self.settings
        start = np.asarray(self.state["tcp"]) if self.commanded is None else self.commanded
        targets, pose = [], start
        for row in actions:
            pose = delta_to_target(pose, row, s.translation_scale, s.rotation_scale, s.action_frame)
            targets.append(pose)
        grips = tuple(gripper_command(s.gripper, row[6]) if len(row) > 6 else None for row in actions)
        with self.lock:
            self.plan = Plan(now, start, tuple(targets), tuple((now + times).tolist()), grips)
        return True

    # ---------------------------------------------------------------- the loop
    def tick(self, controller: Controller, now: float) -> dict:
        """One servo period: read the arm, then command it. Returns the state read."""
        s = self.settings
        state = controller.state()
        previous, self.state = self.state, state
        if state.get("gripper_error") and state["gripper_error"] != previous.get("gripper_error"):
            self.report("gripper_errors", state["gripper_error"])  # the arm carries on
        blocked = condition(state, s.dry_run)
        if blocked != self.blocked:
            if blocked is not None:
                self.report(*blocked)
            self.blocked = blocked
        if blocked is not None:
            self.halt()
            if state.get("runtime_state") == PLAYING:  # e.g. a protective stop: the program still watches
                self._arm_or_kick(controller)
            return state
        if not self.watchdog_armed:
            self._arm_or_kick(controller)  # armed on the first tick that may command
        if not self._move(controller, state, now):
            self._arm_or_kick(controller)  # an idle driver still shows the controller it is alive
        return state

    def _arm_or_kick(self, controller: Controller) -> None:
        if self.settings.dry_run:
            return
        if not self.watchdog_armed:
            controller.arm_watchdog(1.0 / self.settings.controller_watchdog)
            self.watchdog_armed = True
        else:
            controller.kick_watchdog()

    def _target(self, now: float) -> tuple[np.ndarray | None, bool]:
        """(where the plan wants the TCP, whether the driver-side watchdog has expired)."""
        with self.lock:
            plan = self.plan
        if plan is None:
            return None, False
        if now - plan.times[-1] > self.settings.action_timeout:
            return None, True
        return plan.at(now), False

    def _move(self, controller: Controller, state: dict, now: float) -> bool:
        """Follow the plan for one tick; True when a command went to the controller."""
        s = self.settings
        target, expired = self._target(now)
        if target is None:
            if self.commanded is None:
                return False  # at rest, nothing to do
            if np.all(np.abs(self.safety.velocity) < AT_REST):  # braked to rest: end the stream
                if expired:
                    self.report("watchdog_stops", "no valid action in time: arm stopped")
                controller.servo_stop()
                self.halt()
                return True
            target = self.commanded  # brake to rest where the last command was
        q, tcp = np.asarray(state["q"]), np.asarray(state["tcp"])
        if self.commanded is None:
            self.safety.reset()  # a stream starts from rest at the actual pose
        current = tcp if self.commanded is None else self.commanded
        try:
            safe, reports = self.safety.filter(current, target, q, s.period)
        except UnsafeCommand as error:
            self.report("refused", f"command refused, arm stopped: {error}")
            controller.servo_stop()
            self.halt()
            return True
        for text in reports:
            self.report("clamped", text)
        controller.servo_l(safe.tolist(), s.period, s.lookahead, s.gain)
        self.commanded = safe
        self._grip(controller, now)
        return True

    def _grip(self, controller: Controller, now: float) -> None:
        """Send the gripper command of the policy step now running if it changed, or again once a
        second while the gripper reports a failure."""
        with self.lock:
            plan = self.plan
        if plan is None:
            return
        grip = plan.grip_at(now)
        retry = bool(self.state.get("gripper_error")) and now - self.grip_time >= 1.0
        if grip is None or (grip == self.grip_sent and not retry):
            return
        controller.grip(grip)
        self.grip_sent, self.grip_time = grip, now
