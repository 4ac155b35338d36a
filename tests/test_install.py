"""The pip path's install: into a fresh virtual environment (its dependencies seen from the
project's, the project itself installed from scratch), importable outside the source tree with
PYTHONPATH unset, with what `ros2 run` and `ros2 launch` look up (ament index, share/, lib/)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from ros_harness import PACKAGES, declared_executables

CHECK = Path(__file__).resolve().parent / "installed_bringup_check.py"


def outside(tmp_path: Path) -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}


def test_installed_modules_import_outside_the_source_tree(fresh_install, tmp_path):
    fresh = fresh_install
    code = ("import vla_steering.policies, vla_steering_node.node, vla_steering_node.recorder, "
            "vla_steer_bringup.evaluation, sim_bridge.node, ur5_driver.node, vla_steering.cli, vla_steering_node; "
            "print(vla_steering_node.__file__)")
    result = subprocess.run([str(fresh / "bin" / "python"), "-c", code], cwd=tmp_path, env=outside(tmp_path),
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith(str(fresh)), result.stdout + result.stderr[-2000:]


def test_the_launch_files_bringup_finds_every_file_from_the_install(fresh_install, tmp_path):
    fresh = fresh_install
    script = tmp_path / CHECK.name
    script.write_text(CHECK.read_text())  # run from outside the source tree
    result = subprocess.run([str(fresh / "bin" / "python"), str(script)], cwd=tmp_path, env=outside(tmp_path),
                            capture_output=True, text=True)
    assert result.returncode == 0 and f"{fresh}/share" in result.stdout, result.stdout + result.stderr[-2000:]


def test_ament_index_share_and_executables(fresh_install, tmp_path):
    fresh = fresh_install
    for package in PACKAGES:
        assert (fresh / "share" / "ament_index" / "resource_index" / "packages" / package).exists()
        assert (fresh / "share" / package / "package.xml").exists()
    assert (fresh / "share" / "vla_steer_bringup" / "launch" / "steering_node.launch.py").exists()
    assert (fresh / "share" / "vla_steering_node" / "config" / "demo_vla_dictionary.yaml").exists()
    for package in PACKAGES:
        for exe in declared_executables(package):  # for `ros2 run`, and on PATH
            for path in (fresh / "lib" / package / exe, fresh / "bin" / exe):
                assert path.exists() and os.access(path, os.X_OK), path
    for exe in (fresh / "bin" / "vla-steer", fresh / "lib" / "vla_steering_node" / "vla-steer"):
        env = dict(outside(tmp_path), PATH="/usr/bin:/bin")  # the venv not on PATH: ros2 run finds lib/ by prefix
        help_text = subprocess.run([str(exe), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert help_text.returncode == 0 and "reindex" in help_text.stdout, help_text.stderr[-2000:]


@pytest.mark.golden
def test_the_installed_cli_runs_a_lerobot_smolvla_folder(fresh_install, tmp_path):
    """The native flow-matching backends ship in the install: `vla-steer act` on the golden-size SmolVLA folder."""
    from golden import checkpoint, golden_dir

    act = [str(fresh_install / "bin" / "vla-steer"), "act", "--policy", "smolvla", "--checkpoint",
           str(checkpoint("smolvla")), "--vlm", str(golden_dir("smolvla") / "smolvlm2_standin"),
           "--instruction", "pick up the black bowl", "--noise-seed", "3"]
    result = subprocess.run(act, cwd=tmp_path, env=outside(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "action space ee_delta_7d" in result.stdout and "unsteered:" in result.stdout
