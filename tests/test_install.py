"""The pip path's install (scripts/setup.sh): importable outside the source tree, with what
`ros2 run` and `ros2 launch` look up (ament index, share/, lib/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ros_harness import declared_executables

PACKAGES = ("vla_steering_node", "sim_bridge", "ur5_driver", "vla_steer_bringup")


def test_installed_modules_import_outside_the_source_tree(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import vla_steering.policies, vla_steering_node.node, vla_steering_node.recorder, "
            "vla_steer_bringup.evaluation, sim_bridge.node, ur5_driver.node, vla_steering.cli; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


CHECK = Path(__file__).resolve().parent / "installed_bringup_check.py"


def test_the_launch_files_bringup_finds_every_file_from_the_install(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    script = tmp_path / CHECK.name
    script.write_text(CHECK.read_text())  # run from outside the source tree
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "site-packages" in result.stdout, result.stdout + result.stderr[-2000:]


def test_ament_index_share_and_executables():
    prefix = Path(sys.prefix)
    for package in PACKAGES:
        assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / package).exists()
        assert (prefix / "share" / package / "package.xml").exists()
    assert (prefix / "share" / "vla_steer_bringup" / "launch" / "steering_node.launch.py").exists()
    assert (prefix / "share" / "vla_steering_node" / "config" / "demo_vla_dictionary.yaml").exists()
    for package in PACKAGES:
        for exe in declared_executables(package):  # for `ros2 run`, and on PATH
            for path in (prefix / "lib" / package / exe, prefix / "bin" / exe):
                assert path.exists() and os.access(path, os.X_OK), path
