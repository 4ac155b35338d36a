"""Benchmark: start of the simulation flow (what ``ros2 launch vla_steer_bringup sim.launch.py`` starts)
to its first action, from the install.

The recorder, steering node and LIBERO bridge of ``bringup.simulation`` are started as the
launch file starts them (``python -m module --ros-args ...``, the installed modules: working
directory outside the source tree, PYTHONPATH unset); the clock runs from the first process
start to the first observation on ``camera/agentview/image_raw`` and to the first
``action_chunk``. ``ros2 launch`` itself adds its own start-up (not installable here).

Run: PYTHONPATH=tests .venv/bin/python benchmarks/bringup_start.py [repeats]
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from ros_harness import unique_domain_id, wait_for

DOMAIN = unique_domain_id()
os.environ.update(ROS_DOMAIN_ID=str(DOMAIN), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")

import rclpy  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from vla_steer_bringup import bringup  # noqa: E402


def one_start(node) -> tuple[float, float]:
    """(seconds to the first observation, seconds to the first action) of one fresh start."""
    seen: dict[str, float] = {}
    subscriptions = [
        node.create_subscription(Image, "camera/agentview/image_raw",
                                 lambda m: seen.setdefault("observation", time.monotonic()), qos_profile_sensor_data),
        node.create_subscription(JointTrajectory, "action_chunk", lambda m: seen.setdefault("action", time.monotonic()),
                                 10)]
    where = tempfile.mkdtemp()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env.update(MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), PYTHONUNBUFFERED="1")
    specs = bringup.simulation(max_steps=8, image_size=128, output_dir=f"{where}/bags")
    start = time.monotonic()
    processes = [subprocess.Popen([sys.executable, "-m", spec.module, *spec.ros_args()], cwd=where, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for spec in specs]
    try:
        assert wait_for(lambda: "action" in seen, 300, lambda s: rclpy.spin_once(node, timeout_sec=s)), \
            "no action within 300 s"
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            process.wait(30)
        for subscription in subscriptions:
            node.destroy_subscription(subscription)
    return seen["observation"] - start, seen["action"] - start


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rclpy.init()
    node = rclpy.create_node("bringup_start_benchmark")
    try:
        runs = [one_start(node) for _ in range(repeats)]
    finally:
        node.destroy_node()
        rclpy.shutdown()
    observation = [r[0] for r in runs]
    action = [r[1] for r in runs]
    print(f"simulation flow start -> first observation {statistics.median(observation):.1f} s "
          f"({min(observation):.1f}..{max(observation):.1f}), -> first action {statistics.median(action):.1f} s "
          f"({min(action):.1f}..{max(action):.1f}); {repeats} starts from the install")


if __name__ == "__main__":
    main()
