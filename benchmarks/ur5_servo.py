"""Benchmark the UR5 driver against the emulator; prints the figures for BENCHMARKS.md.

* servo-loop period jitter: intervals between the servoL commands the emulator received while the
  arm followed a plan (p50 / p99, and their deviation from the nominal period), and the period the
  driver itself reports on ``robot_status`` (its loop over the last ~2 s);
* end-to-end latency: action_chunk published -> first servoL of it received by the emulator
  (both stamped with the system-wide monotonic clock);
* the servo tick's own time (its work, the safety filter's IK steps included), as the driver
  reports it while the arm moves;
* the largest per-tick commanded acceleration over an adversarial run (random chunks, reversals,
  full-range values), from the emulator's log: it must stay within the limit.

Run: PYTHONPATH=vla_steering_node:ur5_driver:tests .venv/bin/python benchmarks/ur5_servo.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from ros_harness import NodeProcess, unique_domain_id, wait_for

from ur5_driver.safety import SafetyLimits

DOMAIN = unique_domain_id()
os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")

import rclpy  # noqa: E402
from test_ur5_driver import Client, commands, port_open  # noqa: E402


def measure(e_series: bool) -> None:
    """One controller generation: CB3 (125 Hz) or e-Series (500 Hz)."""
    rate = 500.0 if e_series else 125.0
    work = Path(tempfile.mkdtemp())
    log = work / "commands.jsonl"
    emulator = NodeProcess("ur5_driver.emulator", DOMAIN, log=work / "emulator.log",
                           ros_args=["--log", str(log)] + (["--e-series"] if e_series else []))
    wait_for(lambda: port_open(30004), 30)
    driver = NodeProcess("ur5_driver.node", DOMAIN, {"robot_ip": "127.0.0.1", "dry_run": False,
                                                     "servo_rate_hz": rate}, log=work / "driver.log")
    client = Client()
    try:
        if not wait_for(lambda: len(client.joints) > 5 and client.status, 60, client.spin):
            raise SystemExit(f"the driver did not come up:\n{driver.output()[-3000:]}")
        latencies, intervals, ticks = [], [], []
        for trial in range(20):
            before = len(commands(log))
            sent = time.monotonic()
            client.send([[0, 0, 1 if trial % 2 == 0 else -1, 0, 0, 0, -1]] * 4)
            wait_for(lambda n=before: len(commands(log)) > n + 20, 5, client.spin)
            client.wait(0.45)  # the plan (0.2 s) and the watchdog (0.1 s) run out
            new = [e for e in commands(log)[before:] if e["command"] == "servoL"]
            latencies.append(new[0]["t"] - sent)
            intervals += list(np.diff([e["t"] for e in new]))
            if "servo_tick_p99_ms" in client.latest():
                ticks.append(float(client.latest()["servo_tick_p99_ms"]))
        rng = np.random.default_rng(0)
        adversarial_start = len(commands(log))
        for _ in range(40):  # adversarial: random full-range chunks, sent faster than they run
            client.send(rng.uniform(-1.5, 1.5, (rng.integers(1, 8), 7)).tolist())
            client.wait(float(rng.uniform(0.02, 0.3)))
        client.wait(0.5)
        accel = max_accel(commands(log)[adversarial_start:], 1.0 / rate)
        period = 1e3 / rate
        lat = np.array(latencies) * 1e3
        iv = np.array(intervals) * 1e3
        deviation = abs(iv - period)
        status = client.latest()
        print(f"{'e-Series' if e_series else 'CB3'} at {rate:.0f} Hz (nominal period {period:.1f} ms)")
        print(f"  servoL intervals at the emulator, {len(iv)}: p50 {np.percentile(iv, 50):.2f} ms, "
              f"p99 {np.percentile(iv, 99):.2f} ms; |jitter| p50 {np.percentile(deviation, 50):.2f} ms, "
              f"p99 {np.percentile(deviation, 99):.2f} ms")
        print(f"  driver-reported loop period (last 2 s): p50 {status['servo_period_p50_ms']} ms, "
              f"p99 {status['servo_period_p99_ms']} ms")
        print(f"  action published -> first servoL at the emulator, {len(lat)} trials: "
              f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms")
        print(f"  servo tick's own time while moving (driver-reported p99 over 2 s windows): median "
              f"{np.median(ticks):.2f} ms, worst {max(ticks):.2f} ms")
        print(f"  adversarial run: largest commanded linear acceleration {accel:.3f} m/s^2 "
              f"(limit {SafetyLimits().max_linear_accel})")
    finally:
        driver.stop()
        emulator.stop()
        client.node.destroy_node()


def max_accel(entries: list[dict], period: float) -> float:
    """The largest tick-to-tick change of commanded TCP velocity within servo streams, over the period."""
    largest, previous, velocity, last_t = 0.0, None, None, None
    for e in entries:
        if e.get("command") != "servoL" or (last_t is not None and e["t"] - last_t > 5 * period + 0.02):
            previous = velocity = None
        if e.get("command") != "servoL":
            continue
        target = np.array(e["doubles"][:3])
        if previous is not None:
            step = (target - previous) / period
            if velocity is not None:
                largest = max(largest, float(np.linalg.norm(step - velocity)) / period)
            velocity = step
        previous, last_t = target, e["t"]
    return largest


def main() -> None:
    rclpy.init()
    try:
        measure(e_series=False)
        measure(e_series=True)
    finally:
        rclpy.shutdown()


if __name__ == "__main__":
    main()
