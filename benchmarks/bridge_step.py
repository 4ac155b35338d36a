"""Benchmark the LIBERO bridge: wall time per control step through ROS vs the raw LIBERO env step.

The bridge runs as its own process in lockstep; a responder here answers every observation at
once with a one-step chunk, so each step pays the full observation -> action round trip. Same
run, same task, 128 and 256 pixels; both sides are means over the same 40 steps, measured in
back-to-back pairs, and the median of the pairs' ratios is the figure.

Run: PYTHONPATH=vla_steering_node:sim_bridge:tests .venv/bin/python benchmarks/bridge_step.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from ros_harness import NodeProcess, unique_domain_id, wait_for

DOMAIN = unique_domain_id()
os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")

import rclpy  # noqa: E402
from test_sim_bridge import Watcher  # noqa: E402

from sim_bridge.libero_env import LiberoEpisodes  # noqa: E402

STEPS = 40
REPEATS = 3


def raw_step_s(size: int) -> float:
    sim = LiberoEpisodes("libero_spatial", 0, image_size=size)
    sim.reset(0)
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        sim.step(np.array([0, 0, 0.2, 0, 0, 0, -1.0]))
        times.append(time.perf_counter() - start)
    sim.close()
    return statistics.mean(times)


def bridge_step_s(size: int) -> float:
    rclpy.init()
    watcher = Watcher(act=lambda n: [[0, 0, 0.2, 0, 0, 0, -1]])
    arrived: dict[str, float] = {}
    watcher.node.create_timer(0.01, lambda: [arrived.setdefault(e.message, time.monotonic())
                                             for e in watcher.events])
    log = Path(tempfile.mkdtemp()) / "bridge.log"
    process = NodeProcess("sim_bridge.node", DOMAIN, {"suite": "libero_spatial", "task_id": 0, "episodes": 1,
                                                      "max_steps": STEPS, "image_size": size}, log=log)
    try:
        wait_for(lambda: "timeout" in arrived or not process.alive(), 300, watcher.spin)
    finally:
        process.stop()
        watcher.node.destroy_node()
        rclpy.shutdown()
    return (arrived["timeout"] - arrived["start"]) / STEPS


def main() -> None:
    for size in (128, 256):
        ratios = []
        for _ in range(REPEATS):  # raw and bridged back to back, so slow drift of the machine cancels
            raw, bridged = raw_step_s(size), bridge_step_s(size)
            ratios.append(bridged / raw)
            print(f"  {size} px: bridge {bridged * 1e3:.1f} ms per step / raw LIBERO step {raw * 1e3:.1f} ms "
                  f"= {bridged / raw:.3f}")
        print(f"{size} px: median ratio of {REPEATS} pairs {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
