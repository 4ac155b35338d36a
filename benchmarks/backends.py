"""Benchmark the native OpenVLA and pi0 backends at the golden sizes; prints the figures for BENCHMARKS.md.

Per backend, each in its own process (so that peak memory is its own): load time from a
warm page cache, peak resident memory, time per prediction (median), and the steering
overhead as the median of back-to-back steered/unsteered pair ratios (order alternating,
so the machine's drift cancels in each pair), with a 3-neuron clamp on a middle layer.

Run: PYTHONPATH=vla_steering_node:tests .venv/bin/python benchmarks/backends.py
(the golden folders are rebuilt into the cache by tests/golden.py if absent).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

CASES = {"openvla-fp32": ("openvla", {"dtype": "float32"}), "openvla-bf16": ("openvla", {"dtype": "bfloat16"}),
         "pi0-fp32": ("pi0", {})}


def observation(family: str):
    from golden import golden_dir
    from PIL import Image

    from vla_steering.policies import Observation

    inputs = golden_dir(family) / "inputs"
    if family == "openvla":
        images = {"agentview": np.asarray(Image.open(inputs / "image.png").convert("RGB"))}
        state = np.zeros(8, np.float32)
    else:
        images = {n: np.asarray(Image.open(inputs / f"{f}.png").convert("RGB"))
                  for n, f in (("image", "agentview"), ("wrist_image", "wrist"))}
        state = np.load(inputs / "state.npy")
    return Observation(images, state, (inputs / "instruction.txt").read_text())


def run_case(name: str, pairs: int) -> None:
    from golden import checkpoint

    from vla_steering.dictionaries import Concept, InterventionDictionary
    from vla_steering.policies import make_policy, steer

    family, options = CASES[name]
    folder = checkpoint(family)
    if family == "pi0":
        options = {"tokenizer": str(folder / "paligemma_tokenizer_standin")}
    make_policy(family, str(folder), **options)  # warm the page cache
    start = time.perf_counter()
    policy = make_policy(family, str(folder), **options)
    load = time.perf_counter() - start
    stack = policy.model.language_model.model.layers if family == "openvla" else \
        policy.model.model.vlm.language_model.layers
    layer = len(stack) // 2
    steered = steer(policy, InterventionDictionary({"c": Concept("c", tuple((layer, n) for n in (3, 40, 77)))}))
    obs = observation(family)
    steered.act(obs)
    ratios, times = [], {0.0: [], 8.0: []}
    for i in range(pairs):
        pair = {}
        for strength in ((8.0, 0.0) if i % 2 == 0 else (0.0, 8.0)):
            steered.engine.set_strength("c", strength)
            begin = time.perf_counter()
            steered.act(obs)
            pair[strength] = time.perf_counter() - begin
            times[strength].append(pair[strength])
        ratios.append(pair[8.0] / pair[0.0])
    params = sum(p.numel() for p in policy.model.parameters()) / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{name}: {params:.0f} M params; load {load:.1f} s; peak RSS {peak:.0f} MiB; prediction "
          f"{statistics.median(times[0.0]):.2f} s unsteered / {statistics.median(times[8.0]):.2f} s steered "
          f"(medians of {pairs}); steering overhead: median pair ratio {statistics.median(ratios):.3f} "
          f"(pairs {min(ratios):.3f}-{max(ratios):.3f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", nargs="?", choices=sorted(CASES), help="one case in this process (default: all)")
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.pairs)
        return
    for case in CASES:
        pairs = 2 if case == "openvla-bf16" else args.pairs  # ~30 s a prediction on a CPU without bf16 units
        subprocess.run([sys.executable, __file__, case, "--pairs", str(pairs)], check=True)


if __name__ == "__main__":
    main()
