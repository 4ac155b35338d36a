"""The UR5 servo loop without ROS: every limit held through every transition, malformed chunks refused,
singularities stopped before, stops reported once (a simulated arm that follows servoL exactly)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ur5_driver.kinematics import fk, ik, jacobian
from ur5_driver.safety import SafetyLimits
from ur5_driver.servo import EMERGENCY_STOP_BIT, PROTECTIVE_STOP_BIT, ChunkRefused, ServoLoop, ServoSettings

HOME = np.array([0.0, -1.57, 1.57, -1.57, -1.57, 0.0])
PERIODS = {"cb3": 1 / 125, "e-series": 1 / 500}


class SimulatedArm:
    """Follows every servoL target exactly; records each command with the tick it came in."""

    def __init__(self, q=HOME):
        self.q = np.array(q, np.float64)
        self.bits, self.runtime_state = 0, 2
        self.commands: list[tuple] = []
        self.tick = 0
        self.busy = 0.0  # time spent simulating the arm (not the driver's)

    def state(self) -> dict:
        return {"q": self.q.tolist(), "tcp": fk(self.q).tolist(), "bits": self.bits, "robot_mode": 7,
                "safety_mode": 1, "runtime_state": self.runtime_state, "speed_scaling": 1.0, "gripper_error": ""}

    def servo_l(self, pose, period, lookahead, gain):
        assert self.runtime_state == 2 and not self.bits, "commanded during a stop"
        start = time.perf_counter()
        self.commands.append(("servoL", self.tick, np.array(pose), fk(self.q)))
        self.q = ik(np.array(pose), self.q)
        self.busy += time.perf_counter() - start

    def servo_stop(self):
        self.commands.append(("servoStop", self.tick))

    def arm_watchdog(self, frequency_hz):
        self.commands.append(("arm_watchdog", self.tick))

    def kick_watchdog(self):
        self.commands.append(("kick", self.tick))

    def grip(self, command):
        self.commands.append(("grip", self.tick, command))


class Rig:
    def __init__(self, period: float, limits: SafetyLimits | None = None, **settings):
        self.period = period
        self.limits = limits or SafetyLimits()
        self.events: list[tuple[str, str]] = []
        self.loop = ServoLoop(ServoSettings(period=period, **settings), self.limits,
                              lambda kind, text: self.events.append((kind, text)))
        self.arm = SimulatedArm()
        self.now = 100.0
        self.tick_times: list[float] = []
        self.run(period)  # the driver reads the arm before any action arrives

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / self.period)):
            self.arm.tick += 1
            start, simulated = time.perf_counter(), self.arm.busy
            self.loop.tick(self.arm, self.now)
            self.tick_times.append(time.perf_counter() - start - (self.arm.busy - simulated))
            self.now += self.period

    def send(self, action, steps: int = 8, step_s: float = 0.05) -> bool:
        times = [(i + 1) * step_s for i in range(steps)]
        return self.loop.accept_chunk([list(action)] * steps, times, self.now)

    def kinds(self, kind: str) -> list[str]:
        return [text for k, text in self.events if k == kind]


def streams(commands: list[tuple]) -> list[list[tuple]]:
    """Runs of servoL on consecutive ticks: a tick without one (a stop, a halt, idling) ends a stream."""
    out, current = [], []
    for command in commands:
        if command[0] != "servoL":
            continue
        if current and command[1] != current[-1][1] + 1:
            out.append(current)
            current = []
        current.append(command)
    return out + ([current] if current else [])


def assert_within_limits(rig: Rig, commands=None) -> int:
    """Per tick: step, linear/angular speed and acceleration within the limits; each stream starts from rest
    at the arm's actual pose; every target inside the workspace box. Returns the number of servoL checked."""
    lim, dt = rig.limits, rig.period
    checked = 0
    for stream in streams(rig.arm.commands if commands is None else commands):
        previous_pose = stream[0][3]  # the arm's actual pose when the stream began
        v_prev, w_prev = np.zeros(3), np.zeros(3)
        for _, _, pose, _ in stream:
            v = (pose[:3] - previous_pose[:3]) / dt
            w = (Rotation.from_rotvec(pose[3:]) * Rotation.from_rotvec(previous_pose[3:]).inv()).as_rotvec() / dt
            assert np.linalg.norm(v) <= lim.max_linear_speed + 1e-9
            assert np.linalg.norm(v) * dt <= lim.max_step_translation + 1e-12
            assert np.linalg.norm(w) <= lim.max_angular_speed + 1e-6
            assert np.linalg.norm(v - v_prev) <= lim.max_linear_accel * dt + 1e-9, (v, v_prev)
            assert np.linalg.norm(w - w_prev) <= lim.max_angular_accel * dt + 1e-6, (w, w_prev)
            assert np.all(pose[:3] >= np.array(lim.workspace_min) - 1e-12)
            assert np.all(pose[:3] <= np.array(lim.workspace_max) + 1e-12)
            previous_pose, v_prev, w_prev = pose, v, w
            checked += 1
    return checked


@pytest.fixture(params=sorted(PERIODS))
def rig(request):
    return Rig(PERIODS[request.param])


def test_every_transition_keeps_position_speed_and_acceleration_within_limits(rig):
    arm = rig.arm
    assert rig.send([0, 0, 1, 0.5, 0, 0, -1])  # start from rest, full speed up and turning
    rig.run(0.3)
    with pytest.raises(ChunkRefused):  # refused mid-stream: the stream goes on
        rig.loop.accept_chunk([[0, 0, -1, 0, 0, 0]] * 3, [0.1, 0.05, 0.2], rig.now)
    rig.run(0.1)
    rig.send([0, 0, -1, -0.5, 0, 0, -1])  # reverse at once: the filter decelerates through zero
    rig.run(0.3)
    arm.bits = 1 << PROTECTIVE_STOP_BIT  # protective stop mid-motion
    rig.run(0.05)
    assert not rig.send([1, 0, 0, 0, 0, 0])  # ignored while stopped
    arm.bits = 0  # unlocked
    rig.run(0.02)
    rig.send([1, 0, 0, 0, 0, 0, 1])
    rig.run(0.2)
    arm.runtime_state = 1  # the program stops (the controller's watchdog, the pendant)
    rig.run(0.05)
    arm.runtime_state = 2  # ~/resume_control
    rig.loop.resumed()
    rig.send([-1, 1, 0, 0, 0.3, 0])
    rig.run(0.2)
    rig.loop.connected()  # the link was lost and is back: a fresh stream from rest
    assert not rig.send([0, -1, 0.5, 0, 0, 0.5])  # not before the new link's first state
    rig.run(rig.period)
    assert rig.send([0, -1, 0.5, 0, 0, 0.5])
    rig.run(0.8)  # the plan ends: brake to rest, then the watchdog's servoStop
    assert assert_within_limits(rig) > 0.5 * 1.5 / rig.period
    assert arm.commands[-1][0] in ("kick", "servoStop")
    assert [c for c in arm.commands if c[0] == "servoStop"], "the driver-side watchdog never stopped the arm"
    assert len(rig.kinds("safety_stops")) == 1 and len(rig.kinds("program_stops")) == 1  # once each
    assert len(rig.kinds("refused")) == 0  # the loop reports through the node; accept_chunk raised instead


def test_the_workspace_walls_are_met_by_braking_not_clamping(rig):
    limits = SafetyLimits(workspace_max=(0.70, 0.70, 0.45), workspace_min=(-0.55, -0.70, 0.05))
    wall = Rig(rig.period, limits)
    start = fk(wall.arm.q)  # z 0.432, x -0.487
    for action in ([0, 0, 1, 0, 0, 0], [-1, 0, 0, 0, 0, 0], [-1, 0, 1, 0, 0, 0]):  # top, -x, the corner
        for _ in range(6):
            wall.send(action, steps=10)
            wall.run(0.4)
    final = fk(wall.arm.q)
    assert final[2] == pytest.approx(0.45, abs=2e-3) and final[0] == pytest.approx(-0.55, abs=2e-3)
    assert final[2] > start[2]
    assert assert_within_limits(wall) > 100
    assert not [t for t in wall.kinds("clamped") if "clamped to the workspace box" in t]  # braking sufficed


def test_malformed_chunks_are_refused_and_the_next_good_one_moves(rig):
    rig.run(0.02)
    bad = [([], []), ([[0, 0, 1, 0, 0, 0], [0, 0, 1]], [0.05, 0.1]), ([[0, 0, 1]] * 2, [0.05, 0.1]),
           ([[0, 0, np.inf, 0, 0, 0]], [0.05]), ([[0, 0, 1, 0, 0, 0]] * 2, [0.1, 0.05]),
           ([[0, 0, 1, 0, 0, 0]] * 2, [0.05, 3 * 86400.0]), ([[0, 0, 1, 0, 0, 0]] * 2, [np.nan, 0.1])]
    reasons = []
    for points, times in bad:
        with pytest.raises(ChunkRefused) as refused:
            rig.loop.accept_chunk(points, times, rig.now)
        reasons.append(str(refused.value))
    assert "lengths [3, 6]" in reasons[1] and "6 (7 with the gripper)" in reasons[2]
    assert "non-finite" in reasons[3] and "not decrease" in reasons[4] and "ahead" in reasons[5]
    assert rig.loop.plan is None and not [c for c in rig.arm.commands if c[0] == "servoL"]
    z0 = fk(rig.arm.q)[2]
    rig.send([0, 0, 1, 0, 0, 0])
    rig.run(0.3)
    assert fk(rig.arm.q)[2] > z0 + 0.005


def test_a_motion_into_the_elbow_singularity_stops_before_it_and_the_loop_keeps_time(rig):
    limits = SafetyLimits(workspace_max=(1.2, 1.2, 1.2), max_linear_speed=0.25, max_linear_accel=1.0,
                          max_step_translation=0.02)
    reach = Rig(rig.period, limits, translation_scale=0.02)
    for _ in range(40):  # straight up: the arm stretches out towards elbow = 0
        reach.send([0, 0, 1, 0, 0, 0], steps=10)
        reach.run(0.25)
    smallest = np.linalg.svd(jacobian(reach.arm.q), compute_uv=False)[-1]
    assert smallest >= 0.8 * limits.min_singular_value, reach.arm.q  # stopped before the singularity
    assert any("singularity" in t for t in reach.kinds("clamped")), reach.events[-5:]
    assert assert_within_limits(reach) > 100
    # the loop's own work per tick (no iterative IK): well inside a CB3 period, on this shared CPU too
    assert np.percentile(reach.tick_times, 99) < 1 / 125
    reach.send([0, 0, -1, 0, 0, 0], steps=10)  # and it can move back out
    z = fk(reach.arm.q)[2]
    reach.run(0.5)
    assert fk(reach.arm.q)[2] < z - 0.01


def test_stops_are_reported_once_when_they_happen_even_while_idle(rig):
    arm = rig.arm
    rig.run(0.05)  # idle, no plan
    arm.bits = 1 << PROTECTIVE_STOP_BIT
    rig.run(0.1)
    assert len(rig.kinds("safety_stops")) == 1
    arm.bits = 1 << EMERGENCY_STOP_BIT | 1 << PROTECTIVE_STOP_BIT
    rig.run(0.05)
    assert "emergency stop" in rig.kinds("safety_stops")[-1] and len(rig.kinds("safety_stops")) == 2
    arm.bits = 0
    rig.run(0.05)
    rig.send([0, 0, 1, 0, 0, 0])
    rig.run(0.1)
    arm.runtime_state = 1  # the controller's watchdog stops the program while the driver is moving
    rig.run(0.1)
    assert len(rig.kinds("program_stops")) == 1
    assert not [c for c in arm.commands if c[0] == "servoL" and c[1] > arm.tick - round(0.1 / rig.period)]


def test_the_gripper_command_goes_out_once_per_change(rig):
    rig = Rig(rig.period, gripper="digital_output")
    rig.send([0, 0, 0, 0, 0, 0, 1])
    rig.run(0.1)
    rig.send([0, 0, 0, 0, 0, 0, 1])
    rig.run(0.1)
    rig.send([0, 0, 0, 0, 0, 0, -1])
    rig.run(0.1)
    grips = [c[2] for c in rig.arm.commands if c[0] == "grip"]
    assert len(grips) == 2 and grips[0] != grips[1]
