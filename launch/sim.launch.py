"""ros2 launch vla_steer_bringup sim.launch.py [suite:=libero_10] [task_id:=3] [strengths:=up=2.0] ...

Steering node + LIBERO bridge (headless, sim time) + bag recorder. The node set and parameters
come from vla_steer_bringup.bringup.simulation (tested without the launch packages).
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from vla_steer_bringup import bringup

ARGUMENTS = {
    "suite": ("libero_spatial", "libero_spatial | libero_object | libero_goal | libero_10 | libero_90"),
    "task_id": ("0", "task index in the suite"),
    "init_state": ("0", "first episode's init state (0-49)"),
    "episodes": ("1", "episodes to run; 0 = until shut down"),
    "max_steps": ("0", "step limit per episode; 0 = the suite's"),
    "image_size": ("256", "camera image size in pixels"),
    "policy": ("", "demo | openvla | pi0 | pi05 | smolvla (default: the parameters file's)"),
    "checkpoint": ("", "local checkpoint directory for a real policy"),
    "dictionary": ("", "intervention dictionary YAML (default: the demo VLA's)"),
    "strengths": ("", "initial strengths, e.g. up=2.0,slow=1.0"),
    "record": ("true", "record a rosbag2 (MCAP) bag"),
    "output_dir": ("bags", "where bags go"),
    "bag_name": ("", "the bag's name (default: run_<time>)"),
    "split": ("", "run: one bag; episode: one bag per episode (default when episodes != 1); "
                  "request: the bag the recorder's live bag_name names"),
    "seed": ("", "seeds the simulation and the policy's noise (default: theirs)"),
    "autostart": ("true", "false: the bridge runs an episode only when its ~/reset asks"),
    "video_dir": ("", "write an MP4 per episode here"),
    "policy_server": ("", "the steering node sends its observations to this Ray policy server (default: none)"),
    "ray_address": ("", "that server's Ray cluster (default: auto)"),
    "namespace": ("", "namespace for all nodes"),
    "headless": ("true", "render offscreen with EGL (MUJOCO_GL=egl)"),
}


def start(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    headless = values.pop("headless").lower() == "true"
    values["record"] = values["record"].lower() == "true"
    values["autostart"] = values["autostart"].lower() == "true"
    actions = [SetEnvironmentVariable("MUJOCO_GL", "egl")] if headless else []
    for spec in bringup.simulation(**values):
        actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name,
                            namespace=spec.namespace, parameters=[spec.parameters], output="screen"))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()] + [OpaqueFunction(function=start)])
