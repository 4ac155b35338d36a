"""Benchmark vla_steering_node over real DDS; prints the figures for BENCHMARKS.md.

* end-to-end latency (224x224 RGB image published -> action received) vs the bare policy call,
  measured in the same run with the same observation, in alternating rounds (the spread between
  rounds is printed with the medians);
* time from a parameter set to the first action computed with it, and whether that was the
  next inference;
* the inference rate (observations answered per second, back to back) without and under a flood
  of 45 parameter sets a second.

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

from vla_steering import contract  # noqa: E402
from vla_steering.policies import Observation, SteeredPolicy, make_policy  # noqa: E402
from vla_steering.policies.demo_vla import render_scene  # noqa: E402


def main() -> None:
    scene = np.ascontiguousarray(np.kron(render_scene("left", "red", np.random.default_rng(0)),
                                         np.ones((4, 4, 1), np.uint8))[:224, :224])  # 224x224
    policy = SteeredPolicy(make_policy("demo"))
    observation = Observation({"agentview": scene, "wrist": scene}, np.full(7, 0.1, np.float32), "move left")
    for _ in range(3):
        policy.act(observation)

    def bare_round(n: int = 20) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            policy.act(observation)
            times.append(time.perf_counter() - start)
        return times

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

        def node_round(n: int = 20) -> list[float]:
            times = []
            for _ in range(n):
                start = time.perf_counter()
                client.act()
                times.append(time.perf_counter() - start)
            return times

        rounds = [(bare_round(), node_round()) for _ in range(4)]  # alternating: drift hits both alike
        ratios = [statistics.median(e) / statistics.median(b) for b, e in rounds]
        added = [(statistics.median(e) - statistics.median(b)) * 1e3 for b, e in rounds]
        bare = [t for b, _ in rounds for t in b]
        latencies = [t for _, e in rounds for t in e]
        b, e = statistics.median(bare), statistics.median(latencies)
        print(f"end-to-end image->action {e * 1e3:.1f} ms (median of {len(latencies)}) / bare policy call "
              f"{b * 1e3:.1f} ms = {e / b:.3f}; added {(e - b) * 1e3:.1f} ms (224x224 RGB, loopback, same run)")
        print(f"  per round (20 + 20 calls): ratio {min(ratios):.3f}..{max(ratios):.3f}, added "
              f"{min(added):.1f}..{max(added):.1f} ms; node p10/p90 {np.percentile(latencies, 10) * 1e3:.1f}/"
              f"{np.percentile(latencies, 90) * 1e3:.1f} ms, bare p10/p90 {np.percentile(bare, 10) * 1e3:.1f}/"
              f"{np.percentile(bare, 90) * 1e3:.1f} ms")
        wait_for(lambda: False, 1.2, client.spin)  # the node's next /diagnostics
        inside = [{kv.key: kv.value for kv in s.values} for m in client.diagnostics for s in m.status
                  if contract.LATENCY_KEY in {kv.key for kv in s.values}]
        print(f"  the node's own inference latency (input taken -> chunk published, p50 of its last 200): "
              f"{inside[-1][contract.LATENCY_KEY]} ms")

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

        quiet = answered_per_second(client, 8.0, flood_hz=0.0)
        flooded = answered_per_second(client, 8.0, flood_hz=45.0)
        print(f"inference rate: {quiet:.1f} observations answered/s without parameter sets, {flooded:.1f}/s under "
              f"45 sets/s ({flooded / quiet:.2f} of it)")
    finally:
        process.stop()
        client.node.destroy_node()
        rclpy.shutdown()


def answered_per_second(client, seconds: float, flood_hz: float) -> float:
    """Observations answered per second, each sent once the last is answered, with ``flood_hz``
    SetParameters calls a second going out meanwhile (not waited for)."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    answered, pending = 0, []
    start = time.monotonic()
    next_set = start
    while time.monotonic() - start < seconds:
        stamp = client.publish_observation()
        resend = time.monotonic() + 1.0
        while not any(a.header.stamp == stamp for a in client.actions):
            if flood_hz and time.monotonic() >= next_set:
                value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=0.01 * (len(pending) % 50))
                pending.append(client.set_client.call_async(SetParameters.Request(
                    parameters=[Parameter(name="steering.up.strength", value=value)])))
                next_set += 1 / flood_hz
            if time.monotonic() >= resend:
                client.republish(stamp)
                resend += 1.0
            client.spin(0.001)
        answered += 1
    rate = answered / (time.monotonic() - start)
    wait_for(lambda: all(f.done() for f in pending), 30, client.spin)
    return rate


if __name__ == "__main__":
    main()
