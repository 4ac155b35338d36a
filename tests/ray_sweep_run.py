"""Run a study on Ray's local 2-node test cluster (one CPU each), from inside a loopback-only network namespace
(the tests start it with ``ip netns exec``): ``python ray_sweep_run.py CONFIG OUT``. Prints the cluster's nodes
and their addresses as JSON first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from vla_steer_bringup.evaluation import evaluate
from vla_steer_bringup.study import EvalConfig


def main() -> int:
    config, out = EvalConfig.load(sys.argv[1]), Path(sys.argv[2])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        print(json.dumps({"nodes": len(nodes), "addresses": sorted({n["NodeManagerAddress"] for n in nodes})}),
              flush=True)
        evaluate(config, out, progress=False, address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
