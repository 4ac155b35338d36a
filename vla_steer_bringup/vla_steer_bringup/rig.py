"""A simulation rig kept across episodes: one LIBERO bridge, steering node and recorder, told what to run.

Starting those three nodes (importing torch and robosuite, loading the policy, building the
LIBERO scene) takes ~19 s on the reference machine, longer than a short episode. A rig starts
them once, as processes of their own in one ROS domain (the bridge with ``autostart`` false, the
recorder with ``split: request``), and then runs each episode it is given:

1. names the episode's bag (the recorder's live ``bag_name``; an interrupted earlier attempt's
   bag is made readable and kept aside first);
2. sets the condition's strengths and the episode's seed on the steering node and clears its
   inputs (``~/reset``);
3. sets task, init state, seed, step limit and video folder on the bridge and calls its ``~/reset``;
4. sets a live condition's strengths (through SetParameters, as ``ros2 param set`` does) when sim
   time reaches their step;
5. waits for the episode's end event, then closes the bag (``bag_name`` "").

An episode depends on its key only, not on the episodes the rig ran before: the bridge seeds the
simulation afresh at each episode, the flow-matching policies seed their noise per prediction, the
node starts from no inputs, and every concept a condition of the study names is set each episode
(to the condition's strength or the node's own default).

The node processes get default signal handling (a Ray worker blocks and ignores signals, and a
child inherits both: its SIGINT would never close the bag) and die with the thread that started
them (``PR_SET_PDEATHSIG``: a killed runner leaves nothing publishing in its domain).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from vla_steer_bringup import bringup
from vla_steer_bringup.study import Episode, EvalConfig
from vla_steering import contract
from vla_steering.bags import reindex
from vla_steering_node.steering_parameters import strength_name

if TYPE_CHECKING:
    from vla_steering.policy_server import PolicySpec

_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the forked child must not import or load
PR_SET_PDEATHSIG = 1
READY_TIMEOUT_S = 600.0  # loading a real checkpoint takes minutes on a CPU
CALL_TIMEOUT_S = 60.0


class ServerAddress(NamedTuple):
    """A policy server the rigs' steering nodes send their observations to: its Ray name and cluster."""

    name: str
    address: str


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


def _node_process_setup() -> None:
    """In a node's process between fork and exec (system calls only): default signal handling, and
    killed when the thread that started it ends."""
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


def keep_interrupted(bag: Path) -> None:
    """An unfinished bag of an earlier attempt (a killed worker's): made readable and kept aside."""
    if bag.exists() and not (bag / "metadata.yaml").exists():
        reindex(bag)
        kept = bag.with_name(f"{bag.name}.interrupted_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}")
        bag.rename(kept)
        print(f"{bag.name}: an interrupted recording was kept as {kept}; running the episode again", file=sys.stderr)


def rig_nodes(config: EvalConfig, out: Path, dictionary: str, first: Episode,
              server: ServerAddress | None = None) -> list[bringup.NodeSpec]:
    """The rig's recorder, steering node (sending its observations to ``server``, if given) and bridge."""
    return bringup.simulation(
        suite=first.suite, task_id=first.task, init_state=first.init_state, episodes=0,
        max_steps=config.max_steps, image_size=config.image_size, policy=config.policy,
        checkpoint=config.checkpoint, dictionary=dictionary, record=True, output_dir=str(Path(out) / "bags"),
        namespace=config.namespace, split="request", seed=first.seed, autostart=False,
        policy_server=server.name if server else "", ray_address=server.address if server else "")


def served_policy(config: EvalConfig, dictionary: str) -> PolicySpec:
    """What a policy server loads for this study: the policy a rig's steering node would load itself."""
    from vla_steering.policies import POLICY_OPTIONS
    from vla_steering.policy_server import PolicySpec
    from vla_steering_node.node import default_dictionary

    steering = rig_nodes(config, Path("."), dictionary, config.episodes()[0])[1].parameters
    options = {o: steering[o] for o in POLICY_OPTIONS.get(steering["policy"], {}) if steering.get(o, "") != ""}
    return PolicySpec(steering["policy"], steering.get("checkpoint", ""), steering["device"],
                      steering.get("steering.dictionary") or default_dictionary(), steering["max_abs_strength"],
                      options)


class SimulationRig:
    """Bridge, steering node and recorder of one suite in ROS domain ``domain_id``, kept across episodes."""

    def __init__(self, config: EvalConfig, out: Path, domain_id: int, dictionary: str, first: Episode,
                 server: ServerAddress | None = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.config, self.out, self.suite = config, Path(out), first.suite
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.out / "bags").mkdir(parents=True, exist_ok=True)
        recorder, steering, bridge = rig_nodes(config, self.out, dictionary, first, server)
        env = _env(domain_id)
        tag = f"rig_d{domain_id}_p{os.getpid()}"
        self.processes: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.context = rclpy.Context()
        try:
            for spec in (recorder, steering, bridge):
                log = self.logs / f"{tag}.{spec.name}.log"
                self.processes[spec.name] = (_start(spec, env, log), log)
            rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
            self.node = rclpy.create_node("evaluation_rig", namespace=config.namespace, context=self.context)
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
            self._connect(recorder, steering, bridge)
        except BaseException:
            self.close()
            raise

    def _connect(self, recorder: bringup.NodeSpec, steering: bringup.NodeSpec, bridge: bringup.NodeSpec) -> None:
        from diagnostic_msgs.msg import DiagnosticStatus
        from rcl_interfaces.srv import GetParameters
        from rosgraph_msgs.msg import Clock
        from std_srvs.srv import Trigger

        from vla_steering_node.conversions import qos_profile
        from vla_steering_node.parameter_client import ParameterClient

        self.recorder = ParameterClient(self.node, recorder.full_name)
        self.steering = ParameterClient(self.node, steering.full_name)
        self.bridge = ParameterClient(self.node, bridge.full_name)
        self.steering_reset = self.node.create_client(Trigger, f"{steering.full_name}/reset")
        self.bridge_reset = self.node.create_client(Trigger, f"{bridge.full_name}/reset")
        self.events: list = []
        self.sim_time_s = -1.0
        self.node.create_subscription(DiagnosticStatus, contract.EPISODE_EVENTS.name, self.events.append,
                                      qos_profile(contract.EPISODE_EVENTS))
        self.node.create_subscription(Clock, contract.CLOCK.name, self._on_clock, qos_profile(contract.CLOCK))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for client in (self.recorder.client, self.steering_reset, self.bridge_reset):  # each node is ready
            self._spin_until(client.service_is_ready, deadline, f"{client.srv_name} to be offered")
        # every concept a condition names is set each episode: to its strength there, or the node's default
        concepts = sorted({c for condition in self.config.conditions
                           for c in {**condition.strengths, **condition.live_strengths}})
        names = [strength_name(c) for c in concepts]
        getter = self.node.create_client(GetParameters, f"{steering.full_name}/get_parameters")
        values = self._call(getter, GetParameters.Request(names=names)).values
        self.defaults = {c: v.double_value for c, v in zip(concepts, values, strict=True)}

    def _on_clock(self, msg) -> None:
        self.sim_time_s = msg.clock.sec + msg.clock.nanosec * 1e-9

    # ------------------------------------------------------------------ waiting and calling
    def _check_alive(self) -> None:
        for name, (process, log) in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"the rig's {name} exited ({process.returncode}); see {log}")

    def _spin_once(self, deadline: float, what: str) -> None:
        self._check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        self.executor.spin_once(timeout_sec=0.05)

    def _spin_until(self, done: Callable[[], bool], deadline: float, what: str) -> None:
        while not done():
            self._spin_once(deadline, what)

    def _wait(self, future, what: str):
        self._spin_until(future.done, time.monotonic() + CALL_TIMEOUT_S, what)
        return future.result()

    def _call(self, client, request):
        return self._wait(client.call_async(request), client.srv_name)

    def _set(self, parameters, values: dict, who: str) -> None:
        result = self._wait(parameters.set_async(values), f"{who} to set {sorted(values)}").result
        if not result.successful:
            raise RuntimeError(f"{who} refused {values}: {result.reason}")

    def _trigger(self, client) -> None:
        from std_srvs.srv import Trigger

        response = self._call(client, Trigger.Request())
        if not response.success:
            raise RuntimeError(f"{client.srv_name}: {response.message}")

    # ------------------------------------------------------------------ episodes
    def fits(self, episode: Episode) -> bool:
        """Whether this rig can run ``episode`` (one bridge runs one suite) and its nodes are all running."""
        return episode.suite == self.suite and all(p.poll() is None for p, _ in self.processes.values())

    def run(self, episode: Episode) -> Path:
        """Run ``episode`` (unless its bag is finished); its closed bag."""
        name = episode.name
        bag = self.out / "bags" / name
        if (bag / "metadata.yaml").exists():
            return bag  # resumable: finished episodes are not run again
        keep_interrupted(bag)
        condition = self.config.condition(episode.condition)
        self._set(self.recorder, {"bag_name": name}, "the recorder")
        strengths = {c: float(condition.strengths.get(c, default)) for c, default in self.defaults.items()}
        self._set(self.steering, {**{strength_name(c): v for c, v in strengths.items()},
                                  "seed": episode.seed}, "the steering node")
        self._trigger(self.steering_reset)
        video = str(self.out / "videos" / name) if self.config.video else ""
        self._set(self.bridge, {"task_id": episode.task, "init_state": episode.init_state, "seed": episode.seed,
                                "max_steps": self.config.max_steps, "video_dir": video}, "the bridge")
        self.events.clear()
        self.sim_time_s = -1.0
        self._trigger(self.bridge_reset)
        live = condition.live_at_step is not None
        deadline = time.monotonic() + self.config.episode_timeout_s
        what = f"{name} to end (episode_timeout_s {self.config.episode_timeout_s:.0f})"
        while not any(e.message in contract.EPISODE_OUTCOMES for e in self.events):
            started = any(e.message == contract.EPISODE_STARTED for e in self.events)
            if live and started and self.sim_time_s >= condition.live_at_step * contract.CONTROL_PERIOD_S - 1e-9:
                live = False
                self._set(self.steering, {strength_name(c): float(v)
                                          for c, v in condition.live_strengths.items()}, "the steering node")
            self._spin_once(deadline, what)
        self._set(self.recorder, {"bag_name": ""}, "the recorder")  # it closes the bag once it wrote the end event
        self._spin_until((bag / "metadata.yaml").exists, time.monotonic() + CALL_TIMEOUT_S,
                         f"{name}'s bag to be closed; see {self.processes['bag_recorder'][1]}")
        return bag

    def close(self) -> None:
        """Stop the nodes (the recorder last: it closes its bag) and leave the domain."""
        for name in ("sim_bridge", "vla_steering_node", "bag_recorder"):
            if name in self.processes:
                _stop(self.processes[name][0])
        self.context.try_shutdown()


class EpisodeRunner:
    """Runs episodes one after another on a kept rig, started at the first episode that needs one and
    replaced when an episode does not fit it (another suite) or it failed."""

    def __init__(self, config: EvalConfig, out: Path, domain_id: int, dictionary: str,
                 server: ServerAddress | None = None):
        self.config, self.out, self.domain_id, self.dictionary = config, Path(out), domain_id, dictionary
        self.server = server
        self.rig: SimulationRig | None = None

    def run(self, episode: Episode) -> Path:
        """The episode's closed bag: run now, or finished before (resumable: not run again)."""
        bag = self.out / "bags" / episode.name
        if (bag / "metadata.yaml").exists():
            return bag
        if self.rig is not None and not self.rig.fits(episode):
            self.close()
        if self.rig is None:
            self.rig = SimulationRig(self.config, self.out, self.domain_id, self.dictionary, episode,
                                     self.server)
        try:
            return self.rig.run(episode)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.rig is not None:
            self.rig, rig = None, self.rig
            rig.close()
