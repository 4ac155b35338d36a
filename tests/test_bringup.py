"""The launch files' node set, started here through the same specs the launch files use."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import REFERENCE_DICTIONARIES
from ros_harness import start_spec, unique_domain_id, wait_for

from vla_steer_bringup import bringup
from vla_steering_node.share import share_file

DOMAIN = unique_domain_id()
os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
rclpy = pytest.importorskip("rclpy")


def test_spec_reads_the_parameters_file_and_overrides():
    spec = bringup.steering_node(namespace="robot1", use_sim_time=True, policy="demo", checkpoint="")
    assert (spec.package, spec.executable, spec.name) == ("vla_steering_node", "vla_steering_node",
                                                          "vla_steering_node")
    assert spec.parameters["cameras"] == ["agentview", "wrist"] and spec.parameters["use_sim_time"] is True
    assert spec.parameters["checkpoint"] == ""  # an empty override keeps the file's value
    args = spec.ros_args()
    assert args[:5] == ["--ros-args", "-r", "__node:=vla_steering_node", "-r", "__ns:=/robot1"]
    assert "cameras:=[agentview, wrist]" in args and "steering.up.strength:=0.0" in args


def test_launch_spec_runs_a_namespaced_node(tmp_path):
    from test_steering_node import Client, dz

    spec = bringup.steering_node(namespace="robot1", **{"steering.up.strength": 2.0})
    rclpy.init()
    process = start_spec(spec, DOMAIN, log=tmp_path / "node.log")
    client = Client(namespace="robot1")
    try:
        from std_msgs.msg import String

        client.instruction.publish(String(data="move left"))
        assert wait_for(lambda: client.set_client.service_is_ready() or not process.alive(), 120, client.spin)
        assert process.alive(), process.output()
        action = client.act(timeout=60)
        assert action.header.frame_id == "ee_delta_7d"
        assert client.get("steering.up.strength").double_value == 2.0
        assert client.set("steering.up.strength", 0.0).successful
        assert dz(action) - dz(client.act()) > 0.5  # the file/launch strength was applied from the start
    finally:
        code = process.stop(sig=signal.SIGTERM)
        client.node.destroy_node()
        rclpy.shutdown()
    assert code == 0, process.output()[-2000:]


def test_a_dictionary_that_does_not_fit_stops_the_node_with_a_reason(tmp_path):
    reference = REFERENCE_DICTIONARIES / "openvla_7b_dictionaries.yaml"
    native = tmp_path / "openvla.yaml"
    from vla_steering.dictionaries import load_dictionary, save_dictionary

    save_dictionary(load_dictionary(reference, intermediate_size=11008), native)
    spec = bringup.steering_node(**{"steering.dictionary": str(native)})
    process = start_spec(spec, DOMAIN, log=tmp_path / "node.log")
    process.process.wait(timeout=120)
    assert process.stop() == 1
    assert "made for intermediate_size 11008, the model has 1536" in process.output()


def test_simulation_flow_specs():
    """What sim.launch.py starts (the evaluation runner starts the same specs, end to end)."""
    recorder, steering, bridge = bringup.simulation(suite="libero_10", task_id=3, strengths="up=2.0, slow=1",
                                                    output_dir="/tmp/b", bag_name="x", image_size=128)
    assert [s.module for s in (recorder, steering, bridge)] == [
        "vla_steering_node.recorder", "vla_steering_node.node", "sim_bridge.node"]
    assert steering.parameters["use_sim_time"] is True and steering.parameters["state_source"] == "libero"
    assert steering.parameters["steering.up.strength"] == 2.0 and steering.parameters["steering.slow.strength"] == 1.0
    assert bridge.parameters["suite"] == "libero_10" and bridge.parameters["task_id"] == 3
    assert recorder.parameters == {"output_dir": "/tmp/b", "bag_name": "x", "use_sim_time": True, "split": "run"}
    # several episodes: a bag each (sim time restarts every episode, so one bag would overlap in time)
    assert bringup.simulation(episodes=3)[0].parameters["split"] == "episode"
    assert bringup.simulation(episodes=3, split="run")[0].parameters["split"] == "run"
    with pytest.raises(ValueError, match="split"):
        bringup.simulation(split="hourly")
    assert len(bringup.simulation(record=False)) == 2
    with pytest.raises(ValueError, match="concept=value"):
        bringup.simulation(strengths="up")


def test_hardware_flow_specs_refuse_what_is_unsafe_or_unknown():
    with pytest.raises(ValueError, match="robot_ip is required"):
        bringup.hardware()
    with pytest.raises(ValueError, match="ur_type"):
        bringup.hardware(robot_ip="10.0.0.2", ur_type="ur10")
    processes, nodes = bringup.hardware(robot_ip="10.0.0.2", ur_type="ur5e", record=False)
    assert processes == [] and [n.module for n in nodes] == ["ur5_driver.node", "vla_steering_node.node"]
    driver = nodes[0].parameters
    assert driver["dry_run"] is True and driver["servo_rate_hz"] == 500.0  # safe by default; e-Series rate
    assert driver["max_linear_speed"] == 0.10  # limits from config/ur5_driver.yaml
    assert driver["gripper"] == "none"
    _, nodes = bringup.hardware(robot_ip="10.0.0.2", gripper="robotiq_socket")
    assert nodes[0].parameters["gripper"] == "robotiq_socket"
    with pytest.raises(ValueError, match="gripper must be one of"):
        bringup.hardware(robot_ip="10.0.0.2", gripper="suction")


@pytest.mark.parametrize(("launch_file", "function", "launch_only"), [
    ("hardware.launch.py", bringup.hardware, set()),
    ("sim.launch.py", bringup.simulation, {"headless"}),  # sets MUJOCO_GL in the launch file itself
])
def test_launch_arguments_are_exactly_what_the_bringup_function_takes(launch_file, function, launch_only):
    """The launch files pass every argument as ``function(**values)``: a missing or extra name would
    only fail under ``ros2 launch``, which cannot run here, so it is checked from the source."""
    import ast
    import inspect

    tree = ast.parse(share_file("vla_steer_bringup", f"launch/{launch_file}").read_text())
    names = next(ast.literal_eval(node.value).keys() for node in tree.body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ARGUMENTS")
    assert set(names) - launch_only == set(inspect.signature(function).parameters)
