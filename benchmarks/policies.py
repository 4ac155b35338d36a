"""Benchmark the policy layer; prints the figures for BENCHMARKS.md.

* steering overhead: steered / unsteered time per step on the demo VLA (the real backends:
  benchmarks/backends.py);
* causal check on the demo VLA: change in predicted vertical motion (dz) when clamping the
  'up' concept vs its size-matched random control, over 60 observations, mean and 95% CI;
* demo VLA time per step and peak memory.

Run: PYTHONPATH=vla_steering_node .venv/bin/python benchmarks/policies.py
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import numpy as np

from vla_steering.dictionaries import load_dictionary
from vla_steering.policies import Observation, SteeredPolicy, make_policy
from vla_steering.policies.demo_vla import render_scene
from vla_steering.steering import SteeringEngine

ROOT = Path(__file__).resolve().parents[1]


def step_time(policy: SteeredPolicy, observation: Observation, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy.act(observation)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def overhead(name: str, policy: SteeredPolicy, engine: SteeringEngine, concept: str, obs: Observation,
             pairs: int = 60) -> None:
    """Steered / unsteered time per step as the median of per-pair ratios: one steered and one
    unsteered call back to back (order alternating), so the machine's drift cancels in each pair."""
    for _ in range(3):
        policy.act(obs)
    ratios, steered, plain = [], [], []
    for i in range(pairs):
        times = {}
        for strength in ((2.0, 0.0) if i % 2 == 0 else (0.0, 2.0)):
            engine.set_strength(concept, strength)
            start = time.perf_counter()
            policy.act(obs)
            times[strength] = time.perf_counter() - start
        steered.append(times[2.0])
        plain.append(times[0.0])
        ratios.append(times[2.0] / times[0.0])
    engine.set_strength(concept, 0.0)
    s, u = statistics.median(steered), statistics.median(plain)
    print(f"steering overhead, {name}: steered {s * 1e3:.2f} ms / unsteered {u * 1e3:.2f} ms (medians); "
          f"median of {pairs} per-pair ratios {statistics.median(ratios):.3f}")


def mean_ci(values: np.ndarray) -> str:
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    return f"{values.mean():+.3f} ± {half:.3f}"


def main() -> None:
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    demo = make_policy("demo")
    dictionary = load_dictionary(ROOT / "config" / "demo_vla_dictionary.yaml", intermediate_size=1536)
    engine = SteeringEngine(demo.model, dictionary)
    policy = SteeredPolicy(demo, engine)
    obs = Observation({"agentview": render_scene("left", "red", np.random.default_rng(0))},
                      np.zeros(8, np.float32), "move left")
    print(f"demo VLA: {step_time(policy, obs, 20) * 1e3:.1f} ms per step (median of 20); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          f"(process start {rss_start:.0f} MiB)")
    overhead("demo VLA ('up', 10 neurons on 9 layers)", policy, engine, "up", obs)

    instructions = ["move left", "move right", "move forward", "move back", "reach the block",
                    "go down slowly", "go to the red block", "push forward quickly", "slide left", "put it down"]
    observations = [Observation({"agentview": render_scene(side, "red", np.random.default_rng(seed))},
                                np.zeros(8, np.float32), text)
                    for text in instructions for seed, side in enumerate(("left", "right", "left", "right", "left",
                                                                          "right"))]

    def dz(strengths: dict[str, float]) -> np.ndarray:
        engine.set_strengths({name: 0.0 for name in dictionary.concepts} | strengths)
        return np.array([policy.act(o).actions[0, 2] for o in observations])

    base = dz({})
    up, control = dz({"up": 2.0}) - base, dz({"up_random": 2.0}) - base
    print(f"causal check over {len(observations)} observations, clamp at 2.0: change in dz "
          f"'up' {mean_ci(up)}, size-matched random control {mean_ci(control)} (mean ± 95% CI)")


if __name__ == "__main__":
    main()
