"""Benchmark evaluation at scale on this machine; prints the figures for BENCHMARKS.md.

In one run, inside a loopback-only network namespace (made here, deleted after; Ray's traffic stays
on 127.0.0.1): the CI sweep (``config/eval_sweep_ci.yaml``, 4 episodes) sequentially and on 2 Ray
workers (``ray.init()`` here) — episodes per hour and their ratio; what Ray adds per episode (its
start, shared by the episodes; the wait from submitting an episode to its worker starting it);
and what batching observations could gain on this CPU: the demo VLA's time for a batch of 2
observations against 2 single ones (a batching policy actor is not built: see BENCHMARKS.md).

Run (as root): PYTHONPATH=vla_steering_node:vla_steer_bringup:sim_bridge .venv/bin/python benchmarks/sweep.py
[--max-steps N] (the same sweep with longer episodes: N steps instead of the preset's 8)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


def inside() -> None:
    import ray

    from vla_steer_bringup.evaluation import evaluate
    from vla_steer_bringup.ray_runner import run_on_ray
    from vla_steer_bringup.results import ResultStore
    from vla_steer_bringup.study import EvalConfig, study_dictionary

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    config = EvalConfig.load(CONFIG)
    if "--max-steps" in sys.argv:
        config = replace(config, max_steps=int(sys.argv[sys.argv.index("--max-steps") + 1]))
    episodes = len(config.episodes())
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        evaluate(config, Path(scratch) / "sequential", progress=False)
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        out = Path(scratch) / "ray"
        timings = run_on_ray(config, config.episodes(), out, study_dictionary(config, out), ResultStore(out), workers=2)
        sharded = time.perf_counter() - start
        ray.shutdown()
    waits = [t["started"] - t["submitted"] for t in timings]
    durations = [t["ended"] - t["started"] for t in timings]
    per_hour = lambda seconds: episodes / seconds * 3600  # noqa: E731
    print(f"CI sweep, {episodes} episodes of {config.max_steps} steps: sequential {sequential:.1f} s "
          f"({per_hour(sequential):.0f} episodes/h); "
          f"2 Ray workers {sharded:.1f} s incl. Ray's start ({per_hour(sharded):.0f} episodes/h); "
          f"ratio {sequential / sharded:.2f}")
    print(f"Ray start {ray_start:.1f} s ({ray_start / episodes:.2f} s per episode of this sweep); submit-to-start wait "
          f"per episode: mean {sum(waits) / len(waits):.2f} s (max {max(waits):.2f}, the first includes starting "
          f"the worker); an episode on a worker {sum(durations) / len(durations):.1f} s vs "
          f"{sequential / episodes:.1f} s sequentially")
    print(f"demo VLA, one batch of 2 observations / 2 single: {batching():.3f} (median of 20)")


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
