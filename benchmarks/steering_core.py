"""Benchmark the steering core on real SmolLM2-135M weights; prints the figures for BENCHMARKS.md.

* hook overhead: steered / unsteered forward time, 20-neuron clamp on 4 layers, same run;
* projection throughput (GFLOP/s) of all 30 layers next to this machine's matmul peak,
  measured in the same run on the same shapes, and the peak memory the projection adds.

Run: .venv/bin/python benchmarks/steering_core.py
"""

from __future__ import annotations

import resource
import statistics
import time

import torch

from vla_steering.dictionaries import Concept, InterventionDictionary
from vla_steering.loading import load_language_model
from vla_steering.projection import project_value_vectors, rows_per_batch, source_from_model
from vla_steering.steering import SteeringEngine


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    torch.manual_seed(0)
    model, tokenizer = load_language_model("smollm2-135m")
    ids = tokenizer("Pick up the red block and place it on the shelf above the table", return_tensors="pt")
    neurons = tuple((layer, n) for layer in (8, 14, 20, 26) for n in range(0, 100, 20))
    engine = SteeringEngine(model, InterventionDictionary({"c": Concept("c", neurons)}, intermediate_size=1536))

    def forward():
        with torch.inference_mode():
            model(**ids)

    for _ in range(5):
        forward()
    # interleave steered and unsteered rounds so drift affects both equally
    steered, unsteered = [], []
    for _ in range(10):
        engine.set_strength("c", 4.0)
        steered.append(median_time(forward, 5))
        engine.set_strength("c", 0.0)
        unsteered.append(median_time(forward, 5))
    s, u = statistics.median(steered), statistics.median(unsteered)
    print(f"hook overhead: steered {s * 1e3:.2f} ms / unsteered {u * 1e3:.2f} ms = {s / u:.3f} "
          f"(20 neurons clamped on 4 layers, {ids['input_ids'].shape[1]} tokens)")
    engine.remove()

    source = source_from_model(model, "smollm2-135m")
    vocab, width = source.unembedding.shape
    batch = rows_per_batch(vocab, 256)
    a, b = torch.randn(batch, width), source.unembedding.T.contiguous()
    mm = median_time(lambda: a @ b, 10)
    peak = 2 * batch * width * vocab / mm / 1e9
    rss_before = rss_mib()
    start = time.perf_counter()
    projection = project_value_vectors(source, top_k=10, progress=False)
    elapsed = time.perf_counter() - start
    flops = 2 * len(projection) * width * vocab
    achieved = flops / elapsed / 1e9
    print(f"projection: {len(projection)} neurons x {vocab} tokens in {elapsed:.1f} s = {achieved:.1f} GFLOP/s; "
          f"matmul peak on the same ({batch}x{width})@({width}x{vocab}) blocks {peak:.1f} GFLOP/s; "
          f"ratio {achieved / peak:.2f}")
    print(f"peak RSS: {rss_before:.0f} MiB before projecting, {rss_mib():.0f} MiB after "
          f"(model loaded; the projection adds {rss_mib() - rss_before:.0f} MiB)")


if __name__ == "__main__":
    main()
