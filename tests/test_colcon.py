"""ros2_ws builds with `colcon build`, with and without --symlink-install (colcon from PyPI; a ROS distro
runs the same); from the plain install, outside the source tree with PYTHONPATH unset, the launch
files' bringup finds its data and the evaluation runner completes the CI preset."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ros_harness import PACKAGES, declared_executables, unique_domain_id

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
        # `ros2 run vla_steer_bringup evaluation eval_ci` from the plain install: the CI preset completes
        env.update(ROS_DOMAIN_ID=str(unique_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        evaluation = install / "vla_steer_bringup" / "lib" / "vla_steer_bringup" / "evaluation"
        run = subprocess.run(["bash", "-c", f". {install}/setup.sh && {evaluation} eval_ci --out {tmp_path}/eval"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        rows = list(csv.DictReader((tmp_path / "eval" / "report" / "results.csv").open()))
        assert [(r["condition"], r["steps"]) for r in rows] == [("baseline", "24"), ("up_2.0", "24")]
        assert all(r["bag"].startswith(str(tmp_path / "eval" / "bags")) for r in rows)
