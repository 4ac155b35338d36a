"""Headless evaluation studies: sim bridge + steering node + bag recorder per episode, then metrics and a report.

``python -m vla_steer_bringup.evaluation eval_demo [--out DIR] [--workers N | --address ADDR]``
(or ``ros2 run vla_steer_bringup evaluation``)

The config is a YAML file, or the name of one the package installs (``eval_demo``, ``eval_ci``);
what it may say is :mod:`vla_steer_bringup.study`'s. A *live* condition starts unsteered and
the runner sets the strengths through the node's SetParameters service — exactly what ``ros2
param set`` calls — when sim time reaches that step. One bag per episode, named after its key
(``<suite>_t<task>_i<init>_<condition>_s<seed>``), and one results row
(:mod:`vla_steer_bringup.results`): a finished episode is not run again (resumable); an
interrupted one's bag is made readable, kept aside and the episode run again. Then
``report/results.csv``, ``success_rate.csv``, plots and ``report.md``.

Episodes run one after another in this process, or with ``--workers N`` (N > 1) / ``--address``
(or ``RAY_ADDRESS``) sharded over Ray workers (:mod:`vla_steer_bringup.ray_runner`), each with its
own ROS domain; the rows and metrics are the same either way.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vla_steer_bringup import bringup
from vla_steer_bringup.results import ResultStore
from vla_steer_bringup.study import Episode, EvalConfig, study_dictionary
from vla_steering import contract
from vla_steering.bags import BagError, reindex
from vla_steering.metrics import episode_from_bag, episode_metrics
from vla_steering.report import write_report


def _env(domain_id: int) -> dict:
    """The nodes' environment: they import the very packages this runner imported (an install's,
    or a source tree's)."""
    import sim_bridge
    import vla_steering
    import vla_steering_node

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    roots = dict.fromkeys(str(Path(m.__file__).resolve().parents[1]) for m in (vla_steering, vla_steering_node,
                                                                               sim_bridge))
    env["PYTHONPATH"] = os.pathsep.join([*roots, *filter(None, [env.get("PYTHONPATH")])])
    return env


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the forked child must not import or load
PR_SET_PDEATHSIG = 1


def _node_process_setup() -> None:
    """In a node's process before it runs: default signal handling (a Ray worker blocks and ignores signals,
    and a child inherits both: its SIGINT would never close the bag), and killed when the runner that
    started it dies (a killed Ray worker must not leave its episode's nodes publishing in its ROS domain).
    It runs between fork and exec, so it only makes system calls."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


def _start(spec: bringup.NodeSpec, env: dict, log: Path) -> subprocess.Popen:
    """Start a launch file's node spec as `python -m module --ros-args ...`."""
    return subprocess.Popen([sys.executable, "-m", spec.module, *spec.ros_args()], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, preexec_fn=_node_process_setup)


def _stop(process: subprocess.Popen, timeout: float = 30.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class LiveSetter:
    """Sets steering parameters through SetParameters once sim time reaches a step."""

    def __init__(self, node_name: str, at_step: int, strengths: dict):
        import rclpy
        from rosgraph_msgs.msg import Clock

        from vla_steering_node.conversions import qos_profile
        from vla_steering_node.parameter_client import ParameterClient

        self.rclpy = rclpy
        rclpy.init()
        self.node = rclpy.create_node("evaluation_live_setter")
        self.client = ParameterClient(self.node, node_name)
        self.at_s = at_step * contract.CONTROL_PERIOD_S
        self.strengths = strengths
        self.done = False
        self.node.create_subscription(Clock, contract.CLOCK.name, self.on_clock, qos_profile(contract.CLOCK))

    def on_clock(self, msg) -> None:
        now = msg.clock.sec + msg.clock.nanosec * 1e-9
        if not self.done and now >= self.at_s - 1e-9:
            self.done = True
            self.pending = self.client.set_async({f"steering.{k}.strength": float(v) for k, v in
                                                  self.strengths.items()})

    def spin(self, seconds: float) -> None:
        self.rclpy.spin_once(self.node, timeout_sec=seconds)

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.shutdown()


def run_episode(config: EvalConfig, episode: Episode, out: Path, domain_id: int, dictionary: str) -> Path:
    """Run one episode (unless its bag is finished) in ROS domain ``domain_id``; its closed bag."""
    name = episode.name
    bag = out / "bags" / name
    if (bag / "metadata.yaml").exists():
        return bag  # resumable: finished episodes are not run again
    if bag.exists():  # an interrupted run: keep what it recorded (made readable), run the episode again
        reindex(bag)
        kept = bag.with_name(f"{name}.interrupted_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}")
        bag.rename(kept)
        print(f"{name}: an interrupted recording was kept as {kept}; running the episode again", file=sys.stderr)
    condition = config.condition(episode.condition)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = _env(domain_id)
    recorder_spec, steering_spec, bridge_spec = bringup.simulation(
        suite=episode.suite, task_id=episode.task, init_state=episode.init_state, episodes=1,
        max_steps=config.max_steps, image_size=config.image_size, policy=config.policy, checkpoint=config.checkpoint,
        dictionary=dictionary, strengths=",".join(f"{k}={v}" for k, v in condition.strengths.items()),
        record=True, output_dir=str(out / "bags"), bag_name=name,
        video_dir=str(out / "videos" / name) if config.video else "", namespace=config.namespace, seed=episode.seed)
    recorder = _start(recorder_spec, env, logs / f"{name}.recorder.log")
    steering = _start(steering_spec, env, logs / f"{name}.steering.log")
    live = None
    try:
        if condition.live_at_step is not None:
            os.environ["ROS_DOMAIN_ID"] = str(domain_id)
            live = LiveSetter(steering_spec.full_name, condition.live_at_step, condition.live_strengths)
        bridge = _start(bridge_spec, env, logs / f"{name}.bridge.log")
        deadline = time.monotonic() + config.episode_timeout_s
        while bridge.poll() is None and time.monotonic() < deadline:
            if live is not None:
                live.spin(0.05)
            else:
                time.sleep(0.2)
        if _stop(bridge) != 0:
            raise RuntimeError(f"{name}: the simulation bridge failed; see {logs / (name + '.bridge.log')}")
    finally:
        _stop(steering)
        _stop(recorder)
        if live is not None:
            live.close()
    if not (bag / "metadata.yaml").exists():
        raise BagError(f"{name}: the recorder left no closed bag; see {logs / (name + '.recorder.log')}")
    return bag


def episode_row(config: EvalConfig, episode: Episode, bag: Path) -> dict:
    """The results row of a finished episode: its key, concept and strength, bag and metrics."""
    condition = config.condition(episode.condition)
    row = {"suite": episode.suite, "task_id": episode.task, "init_state": episode.init_state,
           "condition": episode.condition, "seed": episode.seed, "concept": condition.concept,
           "strength": condition.strength, "bag": str(bag)}
    row.update(episode_metrics(episode_from_bag(bag), config.horizon_steps))
    return row


def run_and_score(config: EvalConfig, episode: Episode, out: Path, domain_id: int, dictionary: str) -> dict:
    """One episode, run (unless finished) and scored: its results row."""
    return episode_row(config, episode, run_episode(config, episode, out, domain_id, dictionary))


def evaluate(config: EvalConfig, out: Path, progress: bool = True, workers: int | None = None,
             address: str | None = None) -> Path:
    """Run every episode of the study not yet in ``out``'s results — here, one after another; or on Ray with
    ``workers`` > 1 or an ``address`` (``workers`` None there: one per CPU) — then write the report over all."""
    from tqdm.auto import tqdm

    out = Path(out)
    store = ResultStore(out)
    dictionary = study_dictionary(config, out)
    episodes = config.episodes()
    todo = [e for e in episodes if store.get(e) is None]
    bar = tqdm(total=len(episodes), initial=len(episodes) - len(todo), desc="episodes", disable=not progress)
    if todo and ((workers or 1) > 1 or address):
        from vla_steer_bringup.ray_runner import run_on_ray

        run_on_ray(config, todo, out, dictionary, store, workers, address, bar.update)
    else:
        domain_id = int(os.environ.get("ROS_DOMAIN_ID", 1 + os.getpid() % 100))
        for episode in todo:
            store.put(episode, run_and_score(config, episode, out, domain_id, dictionary))
            bar.update()
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
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        report = evaluate(EvalConfig.load(args.config), Path(args.out), workers=args.workers, address=args.address)
    except (BagError, RuntimeError, ValueError, FileNotFoundError, KeyError, TypeError) as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 1
    print(f"report: {report}\nresults: {report.parent / 'results.csv'}\nbags: {Path(args.out) / 'bags'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
