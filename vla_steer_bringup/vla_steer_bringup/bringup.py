"""What the launch files start, as plain data that tests can check without the launch packages.

A launch file turns each :class:`NodeSpec` into a ``launch_ros.actions.Node``; tests start the
same specs as processes (``python -m module --ros-args ...``), so both run one code path. This is
system bringup: it may use every package (the UR5 driver's gripper check); none uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vla_steering_node.share import share_file

PACKAGE = "vla_steer_bringup"  # the launch files and their parameter files are in its share


@dataclass(frozen=True)
class NodeSpec:
    package: str
    executable: str
    module: str  # the same node as `python -m module` (pip path, tests)
    name: str
    namespace: str = ""
    parameters: dict = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()

    @property
    def full_name(self) -> str:
        """The node's fully qualified name (``/robot1/vla_steering_node``), as services address it."""
        namespace = self.namespace.strip("/")
        return f"/{namespace}/{self.name}" if namespace else f"/{self.name}"

    def ros_args(self) -> list[str]:
        """Command-line form: --ros-args -r __node:=... -r __ns:=... -p k:=v -r from:=to."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        for key, value in self.parameters.items():
            text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            args += ["-p", f"{key}:={text}"]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        return args


def read_parameters_file(path: str | Path, node_name: str) -> dict:
    """The ``ros__parameters`` of one node (or of ``/**``) in a ROS 2 parameters YAML file."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    out: dict = {}
    for key in ("/**", node_name, f"/{node_name}"):
        out.update((data.get(key) or {}).get("ros__parameters", {}))
    return out


def steering_node(params_file: str | Path | None = None, namespace: str = "", use_sim_time: bool = False,
                  **overrides) -> NodeSpec:
    """vla_steering_node with its parameters file, then launch-argument overrides (empty ones ignored)."""
    params = read_parameters_file(params_file or share_file(PACKAGE, "config/steering_node.yaml"), "vla_steering_node")
    params.update({k: v for k, v in overrides.items() if v not in ("", None)})
    params["use_sim_time"] = bool(use_sim_time)
    return NodeSpec("vla_steering_node", "vla_steering_node", "vla_steering_node.node", "vla_steering_node",
                    namespace, params)


def parse_strengths(text: str) -> dict[str, float]:
    """``"up=2.0,down=1"`` -> ``{"steering.up.strength": 2.0, ...}`` (launch-argument form)."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"strength {item!r} is not concept=value")
        out[f"steering.{name.strip()}.strength"] = float(value)
    return out


def sim_bridge(suite: str = "libero_spatial", task_id: int = 0, init_state: int = 0, episodes: int = 1,
               max_steps: int = 0, image_size: int = 256, video_dir: str = "", namespace: str = "",
               seed: int | str = "", autostart: bool = True) -> NodeSpec:
    params = {"suite": suite, "task_id": int(task_id), "init_state": int(init_state), "episodes": int(episodes),
              "max_steps": int(max_steps), "image_size": int(image_size), "video_dir": video_dir,
              "autostart": bool(autostart)}
    if seed != "":
        params["seed"] = int(seed)
    return NodeSpec("sim_bridge", "sim_bridge", "sim_bridge.node", "sim_bridge", namespace, params)


def recorder(output_dir: str = "bags", bag_name: str = "", use_sim_time: bool = True,
             namespace: str = "", split: str = "run") -> NodeSpec:
    """bag_recorder; ``split: episode`` writes one bag per episode (sim time restarts each episode),
    ``split: request`` the bag its live ``bag_name`` names."""
    if split not in ("run", "episode", "request"):
        raise ValueError(f"split must be run, episode or request, got {split!r}")
    params = {"output_dir": output_dir, "bag_name": bag_name, "use_sim_time": bool(use_sim_time), "split": split}
    return NodeSpec("vla_steering_node", "bag_recorder", "vla_steering_node.recorder", "bag_recorder",
                    namespace, params)


def simulation(suite: str = "libero_spatial", task_id: int = 0, init_state: int = 0, episodes: int = 1,
               max_steps: int = 0, image_size: int = 256, policy: str = "", checkpoint: str = "",
               dictionary: str = "", strengths: str = "", record: bool = True, output_dir: str = "bags",
               bag_name: str = "", video_dir: str = "", namespace: str = "", split: str = "",
               seed: int | str = "", autostart: bool = True, policy_server: str = "",
               ray_address: str = "") -> list[NodeSpec]:
    """The simulation flow: [recorder,] steering node (sim time, LIBERO state), LIBERO bridge. Bags are
    split per episode when a run has several (``split`` "" = episode if ``episodes`` != 1, else run).
    ``seed`` ("" = their defaults) seeds the simulation and the policy's noise; ``autostart`` false:
    the bridge runs an episode only when its ``~/reset`` asks; ``policy_server`` (on the Ray cluster at
    ``ray_address``): the node's policy is served there."""
    steering = steering_node(namespace=namespace, use_sim_time=True, state_source="libero", policy=policy,
                             checkpoint=checkpoint, seed=int(seed) if seed != "" else "",
                             policy_server=policy_server, ray_address=ray_address,
                             **{"steering.dictionary": dictionary}, **parse_strengths(strengths))
    nodes = [steering, sim_bridge(suite, task_id, init_state, episodes, max_steps, image_size, video_dir, namespace,
                                  seed, autostart)]
    if record:
        split = split or ("run" if int(episodes) == 1 else "episode")
        nodes.insert(0, recorder(output_dir, bag_name, True, namespace, split))
    return nodes


@dataclass(frozen=True)
class ProcessSpec:
    """A non-ROS process a launch file starts (the UR controller emulator)."""

    module: str
    arguments: tuple[str, ...] = ()


def hardware(robot_ip: str = "", ur_type: str = "ur5", dry_run: bool = True, limits_file: str = "",
             emulate: bool = False, camera: str = "", gripper: str = "", policy: str = "", checkpoint: str = "",
             dictionary: str = "",
             strengths: str = "", record: bool = True, output_dir: str = "bags",
             namespace: str = "", instruction: str = "") -> tuple[list[ProcessSpec], list[NodeSpec]]:
    """The hardware flow: [emulator,] UR5 driver, steering node, [recorder]."""
    from ur5_driver.gripper import GripperConfig

    if ur_type not in ("ur5", "ur5e"):
        raise ValueError(f"ur_type must be ur5 (CB3) or ur5e, got {ur_type!r}")
    processes = []
    if emulate:
        robot_ip = robot_ip or "127.0.0.1"
        arguments = ["--host", robot_ip, "--log", str(Path(output_dir) / "emulator_commands.jsonl")]
        processes.append(ProcessSpec("ur5_driver.emulator", tuple(arguments + (["--e-series"] if ur_type == "ur5e"
                                                                              else []))))
    if not robot_ip:
        raise ValueError("robot_ip is required (or emulate:=true)")
    params = read_parameters_file(limits_file or share_file(PACKAGE, "config/ur5_driver.yaml"), "ur5_driver")
    params.update(robot_ip=robot_ip, dry_run=bool(dry_run), servo_rate_hz=500.0 if ur_type == "ur5e" else 125.0)
    if camera:
        params["camera"] = camera
    if gripper:
        GripperConfig(gripper)  # an unknown interface is refused here, before anything starts
        params["gripper"] = gripper
    driver = NodeSpec("ur5_driver", "ur5_driver", "ur5_driver.node", "ur5_driver", namespace, params)
    steering = steering_node(namespace=namespace, policy=policy, checkpoint=checkpoint, cameras=["agentview"],
                             state_source="joints", instruction=instruction, **{"steering.dictionary": dictionary},
                             **parse_strengths(strengths))
    nodes = [driver, steering]
    if record:
        nodes.append(recorder(output_dir, "", False, namespace))
    return processes, nodes
