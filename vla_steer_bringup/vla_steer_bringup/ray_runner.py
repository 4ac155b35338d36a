"""Episodes of a study sharded over Ray workers, on this machine or a cluster, each episode run exactly once.

Each worker is a Ray actor (one CPU) with a simulation rig of its own in a ROS domain of its own
(:class:`vla_steer_bringup.rig.EpisodeRunner`: bridge, steering node and recorder started once,
kept across the worker's episodes, exactly as the sequential runner keeps its one); it returns
each episode's results row, which the driver keeps under the episode's key
(:class:`vla_steer_bringup.results.ResultStore`) the moment it arrives. An episode depends on its
key only, so the metrics are the sequential run's.

A worker that dies mid-episode (killed, out of memory, its node lost) loses nothing already
kept: its rig's nodes die with it; the driver starts a replacement worker in a fresh ROS domain
and gives it the episode again — once per death, up to ``retries`` times; the replacement finds
the dead attempt's unfinished bag, makes it readable and keeps it aside. An episode that *fails*
(a node exits with an error) fails the study, as it does sequentially.

With ``max_batch``, one policy server (:mod:`vla_steering.policy_server`) serves every worker's
steering node, batching their observations; if it dies the study stops at once with the reason
(no episode can go on without it).

``ray.init()`` starts Ray on this machine (one worker per core unless told) or, given an address,
joins that cluster; bags and results go to ``out``, which on a cluster must be storage every
node sees.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vla_steer_bringup.results import ResultStore
from vla_steer_bringup.study import Episode, EvalConfig

if TYPE_CHECKING:  # the rig (rclpy) and the server (torch) are imported where used: a worker starts lighter
    from vla_steer_bringup.rig import ServerAddress

DOMAINS = 100  # ROS domain ids 1..100 (0 is the default users run in)


class EpisodeWorker:
    """A Ray actor: runs episodes on its own rig, in its own ROS domain."""

    def __init__(self, domain_id: int, server: ServerAddress | None = None):
        self.domain_id, self.server = domain_id, server
        self.runner = None

    def run(self, config: EvalConfig, episode: Episode, out: str, dictionary: str) -> tuple[dict, dict]:
        """(the episode's results row, timings: the worker's pid and when the episode started and ended)."""
        from vla_steer_bringup.evaluation import episode_row
        from vla_steer_bringup.rig import EpisodeRunner

        started = time.time()
        if self.runner is None:
            self.runner = EpisodeRunner(config, Path(out), self.domain_id, dictionary, self.server)
        row = episode_row(config, episode, self.runner.run(episode))
        return row, {"pid": os.getpid(), "started": started, "ended": time.time()}

    def close(self) -> None:
        """Stop the rig's nodes."""
        if self.runner is not None:
            self.runner.close()


def run_on_ray(config: EvalConfig, episodes: Sequence[Episode], out: Path, dictionary: str, store: ResultStore,
               workers: int | None = None, address: str | None = None,
               done: Callable[[], object] = lambda: None, retries: int = 2, max_batch: int = 0,
               batch_wait_s: float = 0.005) -> list[dict]:
    """Run ``episodes`` on Ray workers, keeping each row in ``store`` as it arrives; each one's timings (worker
    pid; when it was submitted, started and ended). ``max_batch`` > 0: one policy server batching up to that
    many observations arriving within ``batch_wait_s`` of the first serves every worker's steering node (its
    batch sizes: ``out/logs/policy_server.json``)."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

    from vla_steer_bringup.rig import ServerAddress, served_policy
    from vla_steering.policy_server import start_server

    started_here = not ray.is_initialized()
    server = None
    if started_here:
        ray.init(address=address, num_cpus=None if address else (workers or os.cpu_count()),
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(EpisodeWorker)
        base = int(os.environ.get("ROS_DOMAIN_ID", 1 + os.getpid() % DOMAINS))
        created = 0
        address_of_server, watched = None, []
        if max_batch:
            name = f"policy_server_{os.getpid()}_{time.time_ns()}"
            server = start_server(name, served_policy(config, dictionary), max_batch, batch_wait_s)
            address_of_server = ServerAddress(name, ray.get_runtime_context().gcs_address)
            watched = [server.until_stopped.remote()]  # resolves only if the server dies

        def new_worker():
            nonlocal created
            created += 1
            return actor_class.remote(1 + (base + created - 1) % DOMAINS, address_of_server)

        idle = [new_worker() for _ in range(min(count, len(episodes)))]
        pending = list(episodes)
        running: dict = {}  # object ref -> (worker, episode, when it was submitted)
        deaths: dict[Episode, int] = {}
        timings = []
        while pending or running:
            while pending and idle:
                worker, episode = idle.pop(), pending.pop(0)
                running[worker.run.remote(config, episode, str(out), dictionary)] = (worker, episode, time.time())
            ready, _ = ray.wait(list(running) + watched, num_returns=1)
            if ready[0] in watched:  # every node's observations go there: no episode can go on
                try:
                    ray.get(ready[0])
                except (ActorDiedError, ActorUnavailableError) as error:
                    raise RuntimeError(f"the policy server died: {error}") from error
            worker, episode, submitted = running.pop(ready[0])
            try:
                row, timing = ray.get(ready[0])
            except (ActorDiedError, ActorUnavailableError) as error:
                deaths[episode] = deaths.get(episode, 0) + 1
                if deaths[episode] > retries:
                    raise RuntimeError(f"{episode.name}: its worker died {deaths[episode]} times") from error
                ray.kill(worker)
                idle.append(new_worker())
                pending.insert(0, episode)  # run again, once, by a fresh worker
                continue
            except RayTaskError as error:
                raise RuntimeError(f"{episode.name} failed on its worker: {error.cause}") from error
            store.put(episode, row)
            timings.append(timing | {"episode": episode.name, "submitted": submitted})
            idle.append(worker)
            done()
        ray.get([worker.close.remote() for worker in idle])
        if server is not None:
            batches = ray.get(server.stats.remote())
            (Path(out) / "logs" / "policy_server.json").write_text(json.dumps({"batch_sizes": batches}))
        return timings
    finally:
        if server is not None:
            ray.kill(server)
        if started_here:
            ray.shutdown()
