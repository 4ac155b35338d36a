#!/usr/bin/env bash
# The main job: set up (unless --no-setup), then run a short headless steered LIBERO simulation with
# the built-in demo VLA (config/eval_demo.yaml): a baseline episode, the 'up' concept, its random-neuron
# control, and an episode where steering.up.strength is set live mid-run through SetParameters.
# Leaves one rosbag2 (MCAP) bag per episode, a results table, a report with plots and videos.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--no-setup" ]; then
    PY=python3
else
    scripts/setup.sh
    PY=.venv/bin/python
fi
export MUJOCO_GL=${MUJOCO_GL:-egl}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
out=${OUT:-artifacts/demo}
# the installed product (setup.sh's pip install, or the Docker image's colcon install), not the source tree
"$PY" -m vla_steer_bringup.evaluation eval_demo --out "$out"
echo "videos: $out/videos"
