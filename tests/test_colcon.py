"""ros2_ws builds with `colcon build`, with and without --symlink-install (colcon from PyPI; a ROS distro
runs the same), and the plain install's bringup finds its data outside the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ros_harness import PACKAGES, declared_executables

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("symlink", [True, False], ids=["symlink-install", "plain"])
def test_colcon_builds_the_workspace(tmp_path, symlink):
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent))
    if colcon is None:
        pytest.skip("colcon is not installed (scripts/setup.sh installs it)")
    result = subprocess.run(
        [colcon, "build", *(["--symlink-install"] if symlink else []), "--base-paths", str(ROOT / "ros2_ws" / "src"),
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{len(PACKAGES)} packages finished" in result.stdout
    install = tmp_path / "install"
    for package in PACKAGES:
        assert (install / package / "share" / package / "package.xml").exists()
        for exe in declared_executables(package):
            assert (install / package / "lib" / package / exe).exists(), exe
    launch = install / "vla_steer_bringup" / "share" / "vla_steer_bringup" / "launch"
    assert {p.name for p in launch.iterdir()} >= {"sim.launch.py", "hardware.launch.py", "steering_node.launch.py"}
    if not symlink:  # the installed copy, sourced as a user does, outside the tree, PYTHONPATH unset
        check = Path(__file__).resolve().parent / "installed_bringup_check.py"
        script = tmp_path / check.name
        script.write_text(check.read_text())
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
        run = subprocess.run(["bash", "-c", f". {install}/setup.sh && {sys.executable} {script}"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and str(install) in run.stdout, run.stdout + run.stderr[-2000:]
