"""Benchmark concept discovery on the demo VLA (real SmolLM2-135M); prints the figures for BENCHMARKS.md.

* capture overhead: the policy's inference with an ActivationCapture on 3 layers over without, as the
  median of back-to-back pair ratios (order alternating), and with a ResidualCapture on 3 layers;
* replay throughput: observations per second through the policy with capture on;
* memory per captured layer: the statistics' bytes (they do not grow with the run);
* SAE training time: TopK and BatchTopK, 256 features, k = 8, 1500 steps on 216 residual vectors.

Run: PYTHONPATH=vla_steering_node:tests .venv/bin/python benchmarks/discovery.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from vla_steering.capture import ActivationCapture, ResidualCapture, record_residuals
from vla_steering.policies import SteeredPolicy, make_policy
from vla_steering.sae import train_sae

LAYERS = [15, 20, 25]


def main() -> None:
    from test_discovery import observations

    policy = make_policy("demo")
    plain = SteeredPolicy(policy)
    obs = observations()[:40]
    plain.act(obs[0])
    for name, make in (("activation", lambda: ActivationCapture(policy.model, layers=LAYERS)),
                       ("residual", lambda: ResidualCapture(policy.model, LAYERS))):
        ratios = []
        for i, o in enumerate(obs):
            pair = {}
            for captured in ((True, False) if i % 2 == 0 else (False, True)):
                capture = make() if captured else None
                start = time.perf_counter()
                if capture is None:
                    plain.act(o)
                else:
                    with capture, (capture.observation(0) if name == "activation" else capture.observation()):
                        plain.act(o)
                pair[captured] = time.perf_counter() - start
            ratios.append(pair[True] / pair[False])
        print(f"{name} capture on {len(LAYERS)} layers: median pair ratio {statistics.median(ratios):.3f} "
              f"(pairs {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} pairs)", flush=True)
    with ActivationCapture(policy.model, layers=LAYERS) as capture:
        start = time.perf_counter()
        for i, o in enumerate(obs):
            with capture.observation(i):
                plain.act(o)
        rate = len(obs) / (time.perf_counter() - start)
        width = capture.stack.intermediate_size
    print(f"replay with activation capture: {rate:.1f} observations/s; statistics {width * 3 * 8 / 1024:.0f} KiB "
          f"per captured layer ({width} neurons x max, argmax, sum)", flush=True)
    all_obs = observations(scenes_per_instruction=2)
    residuals, _ = record_residuals(plain, all_obs, [25])
    train = residuals[np.random.default_rng(0).permutation(len(residuals))[len(residuals) // 5:], 0]
    for kind in ("topk", "batchtopk"):
        trained = train_sae(train, 256, 8, kind, steps=1500)
        print(f"SAE {kind}: {trained.seconds:.1f} s for 1500 steps on {len(train)} x {train.shape[1]} vectors",
              flush=True)


if __name__ == "__main__":
    main()
