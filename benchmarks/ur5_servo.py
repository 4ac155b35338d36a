"""Benchmark the UR5 driver against the emulator; prints the figures for BENCHMARKS.md.

* servo-loop period jitter: intervals between the servoL commands the emulator received while the
  arm followed a plan (p50 / p99, and their deviation from the nominal period);
* end-to-end latency: action_chunk published -> first servoL of it received by the emulator
  (both stamped with the system-wide monotonic clock).

Run: PYTHONPATH=vla_steering_node:ur5_driver:tests .venv/bin/python benchmarks/ur5_servo.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from ros_harness import NodeProcess, unique_domain_id, wait_for

DOMAIN = unique_domain_id()
os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")

import rclpy  # noqa: E402
from test_ur5_driver import Client, commands, port_open  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp())
    log = work / "commands.jsonl"
    rclpy.init()
    emulator = NodeProcess("ur5_driver.emulator", DOMAIN, log=work / "emulator.log", ros_args=["--log", str(log)])
    wait_for(lambda: port_open(30004), 30)
    driver = NodeProcess("ur5_driver.node", DOMAIN, {"robot_ip": "127.0.0.1", "dry_run": False},
                         log=work / "driver.log")
    client = Client()
    try:
        wait_for(lambda: len(client.joints) > 5, 60, client.spin)
        latencies, intervals = [], []
        for trial in range(20):
            before = len(commands(log))
            sent = time.monotonic()
            client.send([[0, 0, 1 if trial % 2 == 0 else -1, 0, 0, 0, -1]] * 4)
            wait_for(lambda n=before: len(commands(log)) > n + 20, 5, client.spin)
            client.wait(0.45)  # the plan (0.2 s) and the watchdog (0.1 s) run out
            new = [e for e in commands(log)[before:] if e["command"] == "servoL"]
            latencies.append(new[0]["t"] - sent)
            intervals += list(np.diff([e["t"] for e in new]))
        period = 1 / 125
        lat = np.array(latencies) * 1e3
        iv = np.array(intervals) * 1e3
        deviation = abs(iv - period * 1e3)
        print(f"servo period (nominal {period * 1e3:.1f} ms), {len(iv)} intervals: "
              f"p50 {np.percentile(iv, 50):.2f} ms, p99 {np.percentile(iv, 99):.2f} ms; "
              f"|jitter| p50 {np.percentile(deviation, 50):.2f} ms, p99 {np.percentile(deviation, 99):.2f} ms")
        print(f"action published -> first servoL at the emulator, {len(lat)} trials: "
              f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms")
    finally:
        driver.stop()
        emulator.stop()
        client.node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
