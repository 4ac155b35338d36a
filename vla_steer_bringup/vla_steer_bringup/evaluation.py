"""Headless evaluation runs: sim bridge + steering node + bag recorder per episode, then metrics and a report.

``python -m vla_steer_bringup.evaluation eval_demo [--out DIR]`` (or ``ros2 run vla_steer_bringup evaluation``)

The config is a YAML file, or the name of one the package installs (``eval_demo``, ``eval_ci``).

The config lists a suite, tasks, init states and conditions; each condition is a baseline, a
set of strengths (``strengths: {up: 2.0}``) or a *live* change (``live: {at_step: 16,
strengths: {up: 2.0}}``: the run starts unsteered and the runner sets the strengths through the
node's SetParameters service — exactly what ``ros2 param set`` calls — when sim time reaches that
step). One bag per episode, named ``<suite>_t<task>_i<init>_<condition>``; a finished bag is
not run again (resumable); an interrupted one is made readable, kept aside and its episode run
again. Then ``results.csv``, ``success_rate.csv``, plots and ``report.md``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vla_steer_bringup import bringup
from vla_steering import contract
from vla_steering.bags import BagError, reindex
from vla_steering.metrics import episode_from_bag, episode_metrics
from vla_steering.report import write_report
from vla_steering_node.share import share_file


@dataclass(frozen=True)
class Condition:
    name: str
    strengths: dict = field(default_factory=dict)
    live_at_step: int | None = None
    live_strengths: dict = field(default_factory=dict)

    @property
    def concept(self) -> str:
        active = {**self.strengths, **self.live_strengths}
        return next(iter(active), "")

    @property
    def strength(self) -> float:
        active = {**self.strengths, **self.live_strengths}
        return float(next(iter(active.values()), 0.0))


@dataclass(frozen=True)
class EvalConfig:
    suite: str
    tasks: list[int]
    init_states: list[int]
    conditions: list[Condition]
    max_steps: int = 0  # 0 = the suite's limit
    image_size: int = 128
    horizon_steps: int = 20
    policy: str = "demo"
    checkpoint: str = ""
    dictionary: str = ""
    video: bool = False
    episode_timeout_s: float = 1800.0
    namespace: str = ""  # every node of the run under it (e.g. robot1)

    @classmethod
    def load(cls, path: str | Path) -> EvalConfig:
        """A config file, or an installed preset's name (``eval_ci``)."""
        path = Path(path)
        if not path.exists() and path.parent == Path("."):
            path = share_file(bringup.PACKAGE, f"config/{path.with_suffix('.yaml').name}")
        data = yaml.safe_load(path.read_text())
        conditions = []
        for c in data.pop("conditions"):
            live = c.get("live") or {}
            conditions.append(Condition(str(c["name"]), dict(c.get("strengths") or {}), live.get("at_step"),
                                        dict(live.get("strengths") or {})))
        if not any(c.name == "baseline" for c in conditions):
            raise ValueError("an evaluation needs a condition named 'baseline' to compare against")
        return cls(conditions=conditions, **data)


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


def _start(spec: bringup.NodeSpec, env: dict, log: Path) -> subprocess.Popen:
    """Start a launch file's node spec as `python -m module --ros-args ...`."""
    return subprocess.Popen([sys.executable, "-m", spec.module, *spec.ros_args()], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


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


def run_episode(config: EvalConfig, task: int, init_state: int, condition: Condition, out: Path,
                domain_id: int) -> Path:
    name = f"{config.suite}_t{task}_i{init_state}_{condition.name}"
    bag = out / "bags" / name
    if (bag / "metadata.yaml").exists():
        return bag  # resumable: finished episodes are not run again
    if bag.exists():  # an interrupted run: keep what it recorded (made readable), run the episode again
        reindex(bag)
        kept = bag.with_name(f"{name}.interrupted_{time.strftime('%Y%m%d_%H%M%S')}")
        bag.rename(kept)
        print(f"{name}: an interrupted recording was kept as {kept}; running the episode again", file=sys.stderr)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = _env(domain_id)
    recorder_spec, steering_spec, bridge_spec = bringup.simulation(
        suite=config.suite, task_id=task, init_state=init_state, episodes=1, max_steps=config.max_steps,
        image_size=config.image_size, policy=config.policy, checkpoint=config.checkpoint,
        dictionary=config.dictionary, strengths=",".join(f"{k}={v}" for k, v in condition.strengths.items()),
        record=True, output_dir=str(out / "bags"), bag_name=name,
        video_dir=str(out / "videos" / name) if config.video else "", namespace=config.namespace)
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


def evaluate(config: EvalConfig, out: Path, progress: bool = True) -> Path:
    from tqdm.auto import tqdm

    domain_id = int(os.environ.get("ROS_DOMAIN_ID", 1 + os.getpid() % 100))
    runs = [(t, i, c) for t in config.tasks for i in config.init_states for c in config.conditions]
    rows, episodes = [], {}
    for task, init_state, condition in tqdm(runs, desc="episodes", disable=not progress):
        bag = run_episode(config, task, init_state, condition, out, domain_id)
        episode = episode_from_bag(bag)
        row = {"suite": config.suite, "task_id": task, "init_state": init_state, "condition": condition.name,
               "concept": condition.concept, "strength": condition.strength, "bag": str(bag)}
        row.update(episode_metrics(episode, config.horizon_steps))
        rows.append(row)
        episodes.setdefault((config.suite, task, init_state), {})[condition.name] = episode
    return write_report(rows, episodes, out / "report", config.horizon_steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="evaluation YAML, or an installed preset: eval_demo, eval_ci")
    parser.add_argument("--out", default="artifacts/evaluation", help="output directory")
    args = parser.parse_args(argv)
    try:
        report = evaluate(EvalConfig.load(args.config), Path(args.out))
    except (BagError, RuntimeError, ValueError, FileNotFoundError, KeyError, TypeError) as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 1
    print(f"report: {report}\nresults: {report.parent / 'results.csv'}\nbags: {Path(args.out) / 'bags'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
