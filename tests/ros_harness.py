"""Start ROS 2 node processes for tests and talk to them with rclpy over real DDS (Fast DDS, localhost)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vla_steering_node", "sim_bridge", "ur5_driver", "vla_steer_bringup")
SOURCE_PATH = os.pathsep.join(str(ROOT / p) for p in PACKAGES)


def declared_executables(package: str) -> list[str]:
    """The executables a package declares (its setup.cfg's console scripts, the one declaration)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / package / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].splitlines()
    return [line.split("=")[0].strip() for line in lines if line.strip()]


def ros_env(domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp", PYTHONUNBUFFERED="1",
               PYTHONPATH=SOURCE_PATH + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def unique_domain_id() -> int:
    """A domain id per test process (0..101 are valid with the default port mapping)."""
    return 1 + (os.getpid() % 100)


def start_spec(spec, domain_id: int, log: Path | None = None) -> NodeProcess:
    """Start a launch file's NodeSpec exactly as its ros_args say."""
    return NodeProcess(spec.module, domain_id, log=log, ros_args=spec.ros_args())


class NodeProcess:
    """A node started as `python -m module --ros-args ...`; stopped with SIGINT, killed if it hangs."""

    def __init__(self, module: str, domain_id: int, params: dict | None = None, log: Path | None = None,
                 ros_args: list[str] | None = None, preexec_fn=None):
        args = [sys.executable, "-m", module]
        if ros_args is not None:
            args += ros_args
        else:
            args += ["--ros-args"]
            for key, value in (params or {}).items():
                args += ["-p", f"{key}:={_ros_value(value)}"]
        self.log_path = log
        self._log = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(args, env=ros_env(domain_id), stdout=self._log, stderr=subprocess.STDOUT,
                                        preexec_fn=preexec_fn)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGINT) -> int:
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path else ""


def _ros_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_ros_value(v) for v in value) + "]"
    return str(value)


def wait_for(predicate, timeout: float, spin=None, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if spin is not None:
            spin(interval)
        else:
            time.sleep(interval)
        if predicate():
            return True
    return False
