"""ros2 launch vla_steer_bringup steering_node.launch.py [policy:=demo] [namespace:=robot1] ...

The steering node alone; what it starts comes from vla_steer_bringup.bringup (tested without launch).
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from vla_steer_bringup import bringup

ARGUMENTS = {
    "params_file": ("", "parameters YAML (default: the package's config/steering_node.yaml)"),
    "namespace": ("", "namespace, to run several robots side by side"),
    "policy": ("", "demo | openvla | pi0 | pi05 | smolvla (default from the parameters file)"),
    "checkpoint": ("", "local checkpoint directory for a real policy"),
    "steering.dictionary": ("", "intervention dictionary YAML (default: the demo VLA's)"),
    "use_sim_time": ("false", "use /clock (true with the simulation bridge)"),
}


def start(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    spec = bringup.steering_node(
        values.pop("params_file") or None, namespace=values.pop("namespace"),
        use_sim_time=values.pop("use_sim_time").lower() == "true", **values)
    return [Node(package=spec.package, executable=spec.executable, name=spec.name, namespace=spec.namespace,
                 parameters=[spec.parameters], remappings=list(spec.remappings), output="screen")]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()] + [OpaqueFunction(function=start)])
