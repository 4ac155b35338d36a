"""ros2 launch vla_steer_bringup hardware.launch.py robot_ip:=192.168.1.10 [dry_run:=false] [emulate:=true] ...

UR5 driver (+ OpenCV camera) + steering node + recorder; with emulate:=true, the UR controller
emulator too. dry_run defaults to true; robot_ip has no default. The node set comes from
vla_steer_bringup.bringup.hardware (tested against the emulator without the launch packages).
"""

import sys

from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from vla_steer_bringup import bringup

ARGUMENTS = {
    "robot_ip": ("", "the robot's IP address (required unless emulate:=true)"),
    "ur_type": ("ur5", "ur5 (CB3, 125 Hz) or ur5e (e-Series, 500 Hz)", ["ur5", "ur5e"]),
    "dry_run": ("true", "log commands without moving the arm", ["true", "false"]),
    "limits_file": ("", "driver parameters YAML with the safety limits (default: config/ur5_driver.yaml)"),
    "emulate": ("false", "start the UR controller emulator and drive it", ["true", "false"]),
    "camera": ("", "OpenCV camera: device index, stream URL or video file"),
    "gripper": ("", "none | robotiq_socket | digital_output (default: the parameters file's)"),
    "policy": ("", "demo | openvla | pi0 | pi05 | smolvla"),
    "checkpoint": ("", "local checkpoint directory for a real policy"),
    "dictionary": ("", "intervention dictionary YAML"),
    "strengths": ("", "initial strengths, e.g. up=2.0"),
    "record": ("true", "record a rosbag2 (MCAP) bag", ["true", "false"]),
    "output_dir": ("bags", "where bags go"),
    "namespace": ("", "namespace for all nodes"),
    "instruction": ("", "the robot's task until one arrives on the instruction topic"),
}


def start(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    for flag in ("dry_run", "emulate", "record"):
        values[flag] = values[flag].lower() == "true"
    processes, nodes = bringup.hardware(**values)
    actions = [ExecuteProcess(cmd=[sys.executable, "-m", p.module, *p.arguments], output="screen") for p in processes]
    actions += [Node(package=n.package, executable=n.executable, name=n.name, namespace=n.namespace,
                     parameters=[n.parameters], output="screen") for n in nodes]
    return actions


def generate_launch_description():
    arguments = [DeclareLaunchArgument(name, default_value=spec[0], description=spec[1],
                                       **({"choices": spec[2]} if len(spec) > 2 else {}))
                 for name, spec in ARGUMENTS.items()]
    return LaunchDescription(arguments + [OpaqueFunction(function=start)])
