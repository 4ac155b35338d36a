"""The UR controller emulator serves the ur_rtde calls a user's own script makes, or refuses them so the
client sees an error (never a hang or a silent no-op)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ros_harness import SOURCE_PATH
from test_ur5_driver import start_emulator

pytest.importorskip("rtde_control")

CLIENT = """
import json, sys, time
import rtde_control, rtde_receive
c = rtde_control.RTDEControlInterface("127.0.0.1")
r = rtde_receive.RTDEReceiveInterface("127.0.0.1")
out = {"step_time": c.getStepTime()}
q = r.getActualQ()
out["moveJ"] = c.moveJ([q[0] + 0.1] + q[1:], 0.5, 0.5)
time.sleep(0.3)  # the emulator reports a move done at once; the arm gets there right after
out["moveJ_reached"] = abs(r.getActualQ()[0] - (q[0] + 0.1)) < 1e-3
pose = r.getActualTCPPose()
out["moveL"] = c.moveL(pose[:2] + [pose[2] + 0.02] + pose[3:], 0.1, 0.5)
time.sleep(0.3)
out["moveL_dz"] = r.getActualTCPPose()[2] - pose[2]
z = r.getActualTCPPose()[2]
out["speedL"] = c.speedL([0, 0, 0.05, 0, 0, 0], 0.5, 0.0)
time.sleep(0.4)
c.speedStop()
out["speedL_dz"] = r.getActualTCPPose()[2] - z
q = r.getActualQ()
out["speedJ"] = c.speedJ([0.2, 0, 0, 0, 0, 0], 0.5, 0.0)
time.sleep(0.3)
c.speedStop()
out["speedJ_dq"] = r.getActualQ()[0] - q[0]
out["unreachable_moveL"] = c.moveL([3.0, 0, 0.3] + pose[3:], 0.1, 0.5)
out["program_running_after"] = c.isProgramRunning()
print(json.dumps(out))
"""


@pytest.mark.parametrize("e_series", [False, True], ids=["cb3", "e-series"])
def test_a_users_own_rtde_calls_are_served_or_refused(tmp_path, e_series):
    emulator = start_emulator(tmp_path / "commands.jsonl", tmp_path, e_series=e_series)
    try:
        run = subprocess.run([sys.executable, "-c", CLIENT], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, PYTHONPATH=SOURCE_PATH))
    finally:
        emulator.stop()
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["step_time"] == (0.002 if e_series else 0.008)
    assert out["moveJ"] and out["moveJ_reached"]
    assert out["moveL"] and out["moveL_dz"] == pytest.approx(0.02, abs=2e-3)
    assert out["speedL"] and out["speedL_dz"] > 0.01  # a held velocity moves the arm until speedStop
    assert out["speedJ"] and out["speedJ_dq"] > 0.03
    assert out["unreachable_moveL"] is False and out["program_running_after"] is False  # refused, visibly
