"""Benchmark evaluation at scale on this machine; prints the figures for BENCHMARKS.md.

In one run, inside a loopback-only network namespace (made here, deleted after; Ray's traffic stays
on 127.0.0.1): the CI sweep (``config/eval_sweep_ci.yaml``, 4 episodes) and the same grid with more
seeds (``--seeds N``, default 6: 2N episodes), each sequentially and on 2 Ray workers
(``ray.init()`` here): wall time of the whole study (starting the rigs included), the steady rate
once every rig is up, and their ratios; what Ray adds (its start; the wait from submitting an
episode to its worker starting it); and what batching observations could gain on this CPU: the demo
VLA's time for a batch of 2 observations against 2 single ones (a batching policy actor is not
built: see BENCHMARKS.md).

Run (as root): PYTHONPATH=vla_steering_node:vla_steer_bringup:sim_bridge .venv/bin/python benchmarks/sweep.py
[--max-steps N] [--seeds N]
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


def completion_times(out: Path) -> list[float]:
    """When each episode's results row was written (the store writes one file per episode as it finishes)."""
    return sorted(path.stat().st_mtime for path in (out / "results").glob("*.json"))


def steady_rate(times: list[float], workers: int) -> float:
    """Episodes per hour once every worker's rig is up: episodes after each worker's first, over their span."""
    return (len(times) - workers) / (times[-1] - times[workers - 1]) * 3600


def measure(config, scratch: Path, label: str) -> None:
    """The study sequentially, then on 2 Ray workers (``ray.init()`` here): wall time, steady rate, Ray's part."""
    import ray

    from vla_steer_bringup.evaluation import evaluate
    from vla_steer_bringup.ray_runner import run_on_ray
    from vla_steer_bringup.results import ResultStore
    from vla_steer_bringup.study import study_dictionary

    episodes = len(config.episodes())
    sequential_start = time.time()
    evaluate(config, scratch / f"{label}_sequential", progress=False)
    sequential = time.time() - sequential_start
    sequential_times = completion_times(scratch / f"{label}_sequential")
    start = time.time()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.time() - start
    out = scratch / f"{label}_ray"
    timings = run_on_ray(config, config.episodes(), out, study_dictionary(config, out), ResultStore(out), workers=2)
    sharded = time.time() - start
    ray.shutdown()
    sharded_times = completion_times(out)
    waits = [t["started"] - t["submitted"] for t in timings]
    per_hour = lambda seconds: episodes / seconds * 3600  # noqa: E731
    print(f"{label}: {episodes} episodes of {config.max_steps} steps; whole study incl. starting: sequential "
          f"{sequential:.1f} s ({per_hour(sequential):.0f} episodes/h), 2 Ray workers {sharded:.1f} s incl. Ray's "
          f"start ({per_hour(sharded):.0f} episodes/h): ratio {sequential / sharded:.2f}; first result after "
          f"{sequential_times[0] - sequential_start:.1f} s / {sharded_times[0] - start:.1f} s")
    if episodes > 4:
        rates = steady_rate(sequential_times, 1), steady_rate(sharded_times, 2)
        print(f"{label}: steady rate (rigs up): sequential {rates[0]:.0f} episodes/h, 2 workers {rates[1]:.0f} "
              f"episodes/h: ratio {rates[1] / rates[0]:.2f}")
    print(f"{label}: Ray start {ray_start:.1f} s; submit-to-start wait per episode: mean "
          f"{sum(waits) / len(waits):.2f} s (max {max(waits):.2f})")


def inside() -> None:
    from vla_steer_bringup.study import EvalConfig

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    config = EvalConfig.load(CONFIG)
    if "--max-steps" in sys.argv:
        config = replace(config, max_steps=int(sys.argv[sys.argv.index("--max-steps") + 1]))
    seeds = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 6
    with tempfile.TemporaryDirectory() as scratch:
        measure(config, Path(scratch), "CI sweep")
        measure(replace(config, seeds=list(range(7, 7 + seeds))), Path(scratch), f"CI sweep x {seeds} seeds")
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
