"""Headless evaluation studies: episodes on a simulation rig (sim bridge + steering node + bag recorder), then
metrics and a report.

``python -m vla_steer_bringup.evaluation eval_demo [--out DIR] [--workers N | --address ADDR] [--batch N]``
(or ``ros2 run vla_steer_bringup evaluation``)

The config is a YAML file, or the name of one the package installs (``eval_demo``, ``eval_ci``);
what it may say is :mod:`vla_steer_bringup.study`'s. How an episode runs (the nodes started once
and told what to run; a *live* condition's strengths set through the node's parameter services
when sim time reaches their step) is :mod:`vla_steer_bringup.rig`'s. One bag per episode, named
after its key (``<suite>_t<task>_i<init>_<condition>_s<seed>``), and one results row
(:mod:`vla_steer_bringup.results`): a finished episode is not run again (resumable); an
interrupted one's bag is made readable, kept aside and the episode run again. Then
``report/results.csv``, ``success_rate.csv``, plots and ``report.md``.

Episodes run one after another on one rig in this process, or with ``--workers N`` (N > 1) /
``--address`` (or ``RAY_ADDRESS``) sharded over Ray workers (:mod:`vla_steer_bringup.ray_runner`),
each with its own rig in its own ROS domain; the rows and metrics are the same either way. With
``--batch N`` one policy server (:mod:`vla_steering.policy_server`) serves every worker's node, batching
their observations: the same rows, the metrics up to a batch's float rounding.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vla_steer_bringup.results import ResultStore
from vla_steer_bringup.rig import EpisodeRunner
from vla_steer_bringup.study import Episode, EvalConfig, study_dictionary
from vla_steering.bags import BagError
from vla_steering.metrics import episode_from_bag, episode_metrics
from vla_steering.report import write_report


def episode_row(config: EvalConfig, episode: Episode, bag: Path) -> dict:
    """The results row of a finished episode: its key, concept and strength, bag and metrics."""
    condition = config.condition(episode.condition)
    row = {"suite": episode.suite, "task_id": episode.task, "init_state": episode.init_state,
           "condition": episode.condition, "seed": episode.seed, "concept": condition.concept,
           "strength": condition.strength, "bag": str(bag)}
    row.update(episode_metrics(episode_from_bag(bag), config.horizon_steps))
    return row


def evaluate(config: EvalConfig, out: Path, progress: bool = True, workers: int | None = None,
             address: str | None = None, batch: int = 0, batch_wait_s: float = 0.005) -> Path:
    """Run every episode of the study not yet in ``out``'s results — here, one after another; or on Ray with
    ``workers`` > 1, an ``address`` (``workers`` None there: one per CPU) or a ``batch`` (> 0: one policy
    server batching up to that many observations, arriving within ``batch_wait_s`` of the first, serves every
    worker) — then write the report over all."""
    from tqdm.auto import tqdm

    out = Path(out)
    store = ResultStore(out)
    dictionary = study_dictionary(config, out)
    episodes = config.episodes()
    todo = [e for e in episodes if store.get(e) is None]
    bar = tqdm(total=len(episodes), initial=len(episodes) - len(todo), desc="episodes", disable=not progress)
    if todo and ((workers or 1) > 1 or address or batch):
        from vla_steer_bringup.ray_runner import run_on_ray

        run_on_ray(config, todo, out, dictionary, store, workers, address, bar.update, max_batch=batch,
                   batch_wait_s=batch_wait_s)
    else:
        runner = EpisodeRunner(config, out, int(os.environ.get("ROS_DOMAIN_ID", 1 + os.getpid() % 100)), dictionary)
        try:
            for episode in todo:
                store.put(episode, episode_row(config, episode, runner.run(episode)))
                bar.update()
        finally:
            runner.close()
    bar.close()
    rows = store.rows(episodes)
    trajectories: dict = {}
    for row in rows:  # the first seed's episodes, where their bags are here (a cluster may keep them elsewhere)
        if row["seed"] == config.seeds[0] and (Path(row["bag"]) / "metadata.yaml").exists():
            key = (row["suite"], row["task_id"], row["init_state"])
            trajectories.setdefault(key, {})[row["condition"]] = episode_from_bag(row["bag"])
    return write_report(rows, trajectories, out / "report", config.horizon_steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="evaluation YAML, or an installed preset: eval_demo, eval_ci")
    parser.add_argument("--out", default="artifacts/evaluation", help="output directory")
    parser.add_argument("--workers", type=int, default=None,
                        help="Ray workers (default: 1 without Ray; with --address, the cluster's CPUs)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                        help="an existing Ray cluster (default: $RAY_ADDRESS; none: this machine)")
    parser.add_argument("--batch", type=int, default=0, metavar="N",
                        help="on Ray: one policy server batching up to N observations serves every worker's "
                             "steering node (default 0: each node loads the policy itself)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="MS",
                        help="how long the policy server waits for more observations after the first (default 5)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.batch < 0 or args.batch_wait_ms < 0:
        parser.error("--batch and --batch-wait-ms must be at least 0")
    try:
        report = evaluate(EvalConfig.load(args.config), Path(args.out), workers=args.workers, address=args.address,
                          batch=args.batch, batch_wait_s=args.batch_wait_ms / 1000)
    except (BagError, RuntimeError, ValueError, FileNotFoundError, KeyError, TypeError) as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 1
    print(f"report: {report}\nresults: {report.parent / 'results.csv'}\nbags: {Path(args.out) / 'bags'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
