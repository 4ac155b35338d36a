"""The pip path: one install of the four ROS 2 packages, exactly as their own ament_python builds declare them.

Each package's ``setup.py`` (packages, data files) and ``setup.cfg`` (executables) are read, not
repeated: Python packages and data files land where colcon puts them (``share/<package>/...``,
the ament index), every executable in ``bin/`` and, for ``ros2 run``, in ``lib/<package>/``.
Metadata and dependencies are in pyproject.toml.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path
from unittest import mock

import setuptools

ROOT = Path(__file__).resolve().parent
PACKAGES = ("vla_steering_node", "sim_bridge", "ur5_driver", "vla_steer_bringup")


def declared(package: str) -> tuple[dict, list[str]]:
    """The package's own setup() arguments (its setup.py run with setup() captured, in its folder)
    and its console scripts (its setup.cfg)."""
    captured: dict = {}
    cwd = os.getcwd()
    os.chdir(ROOT / package)
    try:
        with mock.patch.object(setuptools, "setup", lambda **kwargs: captured.update(kwargs)):
            exec(compile(Path("setup.py").read_text(), f"{package}/setup.py", "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(cwd)
    config = configparser.ConfigParser()
    config.read(ROOT / package / "setup.cfg")
    scripts = config["options.entry_points"]["console_scripts"].split("\n")
    return captured, [line.strip() for line in scripts if line.strip()]


def ros_run_wrapper(package: str, entry: str) -> str:
    """A ``lib/<package>/<name>`` script for an entry point ``name = module:function``: it runs the
    function with the Python of the environment it is installed in (``<prefix>/bin/python3``), so
    ``ros2 run`` works whichever ``python3`` is first on PATH."""
    name, _, target = (part.strip() for part in entry.partition("="))
    module, _, function = target.partition(":")
    path = ROOT / "build" / "ros_executables" / package / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""#!/bin/sh
# `ros2 run {package} {name}` on the pip path (generated from {package}/setup.cfg by setup.py)
python="$(dirname "$0")/../../bin/python3"
[ -x "$python" ] || python=python3
exec "$python" -c 'import sys; from {module} import {function}; sys.argv[0] = "{name}"; sys.exit({function}())' "$@"
""")
    path.chmod(0o755)
    return str(path.relative_to(ROOT))


packages, package_dir, data_files, console_scripts = [], {}, [], []
for package in PACKAGES:
    arguments, entries = declared(package)
    for name in arguments["packages"]:
        packages.append(name)
        package_dir[name] = f"{package}/{name.replace('.', '/')}"
    data_files += [(target, [f"{package}/{source}" for source in sources])
                   for target, sources in arguments["data_files"]]
    console_scripts += entries
    data_files.append((f"lib/{package}", [ros_run_wrapper(package, entry) for entry in entries]))

setuptools.setup(packages=packages, package_dir=package_dir, data_files=data_files,
      entry_points={"console_scripts": console_scripts})
