"""Benchmark vla_steering_node over real DDS; prints the figures for BENCHMARKS.md.

* end-to-end latency (224x224 RGB image published -> action received) vs the bare policy call,
  measured in the same run with the same observation;
* time from a parameter set to the first action computed with it, and whether that was the
  next inference.

Run: PYTHONPATH=vla_steering_node:tests .venv/bin/python benchmarks/steering_node.py
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
from std_msgs.msg import String  # noqa: E402
from test_steering_node import Client  # noqa: E402

from vla_steering.policies import Observation, SteeredPolicy, make_policy  # noqa: E402
from vla_steering.policies.demo_vla import render_scene  # noqa: E402


def main() -> None:
    scene = np.ascontiguousarray(np.kron(render_scene("left", "red", np.random.default_rng(0)),
                                         np.ones((4, 4, 1), np.uint8))[:224, :224])  # 224x224
    policy = SteeredPolicy(make_policy("demo"))
    observation = Observation({"agentview": scene, "wrist": scene}, np.full(7, 0.1, np.float32), "move left")
    for _ in range(3):
        policy.act(observation)
    bare = []
    for _ in range(30):
        start = time.perf_counter()
        policy.act(observation)
        bare.append(time.perf_counter() - start)
    del policy

    rclpy.init()
    log = Path(tempfile.mkdtemp()) / "node.log"
    process = NodeProcess("vla_steering_node.node", DOMAIN, log=log)
    client = Client()
    client.scene = scene
    client.instruction.publish(String(data="move left"))
    try:
        wait_for(lambda: client.set_client.service_is_ready(), 120, client.spin)
        for _ in range(3):
            client.act()
        latencies = []
        for _ in range(30):
            start = time.perf_counter()
            client.act()
            latencies.append(time.perf_counter() - start)
        b, e = statistics.median(bare), statistics.median(latencies)
        print(f"end-to-end image->action {e * 1e3:.1f} ms (median of 30) / bare policy call {b * 1e3:.1f} ms "
              f"= {e / b:.3f}; added {(e - b) * 1e3:.1f} ms (224x224 RGB, loopback, same run)")

        before = len(client.actions)
        start = time.perf_counter()
        assert client.set("steering.up.strength", 2.0).successful
        action = client.act()
        elapsed = time.perf_counter() - start
        state = next(s for s in client.steering if s.header.stamp == action.header.stamp) if wait_for(
            lambda: any(s.header.stamp == action.header.stamp for s in client.steering), 5, client.spin) else None
        values = {kv.key: kv.value for kv in state.status[0].values} if state else {}
        print(f"parameter set -> first action with it: {elapsed * 1e3:.1f} ms (service call included); "
              f"it was inference #{len(client.actions) - before} after the set, "
              f"carrying strength.up={values.get('strength.up')}")
    finally:
        process.stop()
        client.node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
