"""Benchmark evaluation at scale on this machine; prints the figures for BENCHMARKS.md.

In one run, inside a loopback-only network namespace (made here, deleted after; Ray's traffic stays
on 127.0.0.1): the CI sweep (``config/eval_sweep_ci.yaml``, 4 episodes) and the same grid with more
seeds (``--seeds N``, default 6: 2N episodes), each sequentially and on 2 Ray workers
(``ray.init()`` here): wall time of the whole study (starting the rigs included), the steady rate
once every rig is up, and their ratios; what Ray adds (its start; the wait from submitting an
episode to its worker starting it); the batching policy actor off and on (``--batch 2``: one policy
server for both workers, waiting 5 ms or 150 ms for a second observation) on the larger grid, with
the batch sizes it formed and the steering nodes' peak memory; and what batching can gain on this
CPU where requests do coincide: the demo VLA's time for a batch of 2 observations against 2 single
ones, and a policy server's predictions per second for 2 clients sending back to back, batching 2
against 1.

Run (as root): PYTHONPATH=vla_steering_node:vla_steer_bringup:sim_bridge .venv/bin/python benchmarks/sweep.py
[--max-steps N] [--seeds N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "eval_sweep_ci.yaml"


def batching() -> float:
    """Median over 20 of (time for one batch of 2 observations) / (time for 2 single observations)."""
    import statistics

    import numpy as np
    import torch

    from vla_steering.policies import make_policy
    from vla_steering.policies.demo_vla import render_scene, to_pixels

    model = make_policy("demo").model
    rng = np.random.default_rng(0)
    images = [render_scene(side, "red", rng) for side in ("left", "right")]
    texts = ["move up", "lift the block"]
    ratios = []
    with torch.inference_mode():
        model(to_pixels(images, 64), texts)
        for _ in range(20):
            start = time.perf_counter()
            model(to_pixels(images, 64), texts)
            batched = time.perf_counter() - start
            start = time.perf_counter()
            for image, text in zip(images, texts, strict=True):
                model(to_pixels([image], 64), [text])
            ratios.append(batched / (time.perf_counter() - start))
    return statistics.median(ratios)


def completion_times(out: Path) -> list[float]:
    """When each episode's results row was written (the store writes one file per episode as it finishes)."""
    return sorted(path.stat().st_mtime for path in (out / "results").glob("*.json"))


def steady_rate(times: list[float], workers: int) -> float:
    """Episodes per hour once every worker's rig is up: episodes after each worker's first, over their span."""
    return (len(times) - workers) / (times[-1] - times[workers - 1]) * 3600


class NodeMemory:
    """The peak resident memory of every steering node process seen while it runs (sampled twice a second)."""

    def __init__(self):
        self.peaks: dict[int, int] = {}
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            for entry in Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and b"vla_steering_node.node" in (entry / "cmdline").read_bytes():
                        rss = next(int(line.split()[1]) for line in (entry / "status").read_text().splitlines()
                                   if line.startswith("VmRSS:"))
                        self.peaks[int(entry.name)] = max(self.peaks.get(int(entry.name), 0), rss * 1024)
                except (OSError, StopIteration):
                    continue
            time.sleep(0.5)

    def stop(self) -> str:
        self.running = False
        self.thread.join()
        return ", ".join(f"{peak / 2**20:.0f}" for peak in sorted(self.peaks.values())) + " MiB"


def on_ray(config, out: Path, batch: int = 0, wait_s: float = 0.005) -> dict:
    """The study on 2 Ray workers (``ray.init()`` here; with ``batch``, one policy server batching for both,
    waiting ``wait_s`` for more observations after the first)."""
    import ray

    from vla_steer_bringup.ray_runner import run_on_ray
    from vla_steer_bringup.results import ResultStore
    from vla_steer_bringup.study import study_dictionary

    memory = NodeMemory()
    start = time.time()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.time() - start
    timings = run_on_ray(config, config.episodes(), out, study_dictionary(config, out), ResultStore(out), workers=2,
                         max_batch=batch, batch_wait_s=wait_s)
    wall = time.time() - start
    ray.shutdown()
    waits = [t["started"] - t["submitted"] for t in timings]
    served = (out / "logs" / "policy_server.json")
    return {"wall": wall, "start": start, "times": completion_times(out), "ray_start": ray_start, "waits": waits,
            "node_memory": memory.stop(), "batches": served.read_text() if served.exists() else "no server"}


def measure(config, scratch: Path, label: str, batching_actor: bool = False) -> None:
    """The study sequentially, then on 2 Ray workers (``ray.init()`` here): wall time, steady rate, Ray's part;
    with ``batching_actor`` also on 2 workers served by one policy server batching up to 2 observations."""
    from vla_steer_bringup.evaluation import evaluate

    episodes = len(config.episodes())
    sequential_start = time.time()
    evaluate(config, scratch / f"{label}_sequential", progress=False)
    sequential = time.time() - sequential_start
    sequential_times = completion_times(scratch / f"{label}_sequential")
    sharded = on_ray(config, scratch / f"{label}_ray")
    per_hour = lambda seconds: episodes / seconds * 3600  # noqa: E731
    print(f"{label}: {episodes} episodes of {config.max_steps} steps; whole study incl. starting: sequential "
          f"{sequential:.1f} s ({per_hour(sequential):.0f} episodes/h), 2 Ray workers {sharded['wall']:.1f} s incl. "
          f"Ray's start ({per_hour(sharded['wall']):.0f} episodes/h): ratio {sequential / sharded['wall']:.2f}; "
          f"first result after {sequential_times[0] - sequential_start:.1f} s / "
          f"{sharded['times'][0] - sharded['start']:.1f} s")
    if episodes > 4:
        rates = steady_rate(sequential_times, 1), steady_rate(sharded["times"], 2)
        print(f"{label}: steady rate (rigs up): sequential {rates[0]:.0f} episodes/h, 2 workers {rates[1]:.0f} "
              f"episodes/h: ratio {rates[1] / rates[0]:.2f}")
    waits = sharded["waits"]
    print(f"{label}: Ray start {sharded['ray_start']:.1f} s; submit-to-start wait per episode: mean "
          f"{sum(waits) / len(waits):.2f} s (max {max(waits):.2f})")
    if batching_actor:
        off = steady_rate(sharded["times"], 2)
        for wait_s in (0.005, 0.15):
            served = on_ray(config, scratch / f"{label}_ray_batch_{wait_s}", batch=2, wait_s=wait_s)
            on = steady_rate(served["times"], 2)
            print(f"{label}: 2 workers, batching actor off / on (window {wait_s * 1000:.0f} ms): whole study "
                  f"{sharded['wall']:.1f} s / {served['wall']:.1f} s; steady rate {off:.0f} / {on:.0f} episodes/h: "
                  f"ratio {on / off:.2f}; batches {served['batches']}; steering node peak RSS "
                  f"{sharded['node_memory']} / {served['node_memory']}")


async def two_clients(server, observations, states, requests: int) -> float:
    """Predictions per second for 2 clients, each sending its next observation when its last is answered."""
    import asyncio

    async def client(i: int, count: int) -> None:
        for _ in range(count):
            await server.act(observations[i], states[i], {})

    await client(0, 1)  # warm up
    start = time.perf_counter()
    await asyncio.gather(client(0, requests), client(1, requests))
    return 2 * requests / (time.perf_counter() - start)


def server_throughput(requests: int = 40) -> str:
    """Two clients sending observations back to back to a policy server (in this process, no simulator):
    predictions per second with batches of up to 2 against up to 1."""
    import asyncio

    import numpy as np

    from vla_steering.policies.base import Observation
    from vla_steering.policies.demo_vla import render_scene
    from vla_steering.policy_server import PolicyServer, PolicySpec
    from vla_steering.steering import SteeringControls

    rng = np.random.default_rng(0)
    observations = [Observation({"agentview": render_scene(side, "red", rng)}, np.zeros(8, np.float32), "move up")
                    for side in ("left", "right")]
    rates = {}
    for max_batch in (1, 2):
        server = PolicyServer(PolicySpec("demo", dictionary=str(ROOT / "config" / "demo_vla_dictionary.yaml")),
                              max_batch=max_batch)
        controls = SteeringControls(server.describe()["dictionary"], 20.0)
        states = [controls.state, controls.set_strength("up", 2.0)]  # the two clients steer differently
        rates[max_batch] = asyncio.run(two_clients(server, observations, states, requests)), server.stats()
        server.steered.engine.remove()
    return (f"policy server, 2 clients back to back: {rates[1][0]:.2f} predictions/s unbatched, {rates[2][0]:.2f} "
            f"batching 2: ratio {rates[2][0] / rates[1][0]:.2f}; batches {rates[2][1]}")


def inside() -> None:
    from vla_steer_bringup.study import EvalConfig

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    config = EvalConfig.load(CONFIG)
    if "--max-steps" in sys.argv:
        config = replace(config, max_steps=int(sys.argv[sys.argv.index("--max-steps") + 1]))
    seeds = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 6
    with tempfile.TemporaryDirectory() as scratch:
        measure(config, Path(scratch), "CI sweep")
        measure(replace(config, seeds=list(range(7, 7 + seeds))), Path(scratch), f"CI sweep x {seeds} seeds",
                batching_actor=True)
    print(f"demo VLA, one batch of 2 observations / 2 single: {batching():.3f} (median of 20)")
    print(server_throughput())


def main() -> None:
    if "--inside" in sys.argv:
        inside()
        return
    name = f"vlasteerbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, sys.executable, __file__, "--inside", *sys.argv[1:]], check=True,
                       env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


if __name__ == "__main__":
    main()
