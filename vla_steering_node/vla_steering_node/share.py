"""The one way to find vla_steering_node's installed data (config, launch files, dictionaries).

Wherever the package runs from, its ``share/vla_steering_node`` is found, in order:

1. through the ament index (``AMENT_PREFIX_PATH``: a sourced colcon install or a ROS distro);
2. beside the running module's own install prefix (``<prefix>/lib/pythonX.Y/site-packages/
   vla_steering_node`` -> ``<prefix>/share/vla_steering_node``: a pip install, or a colcon
   install whose setup script was not sourced);
3. this environment's ``sys.prefix/share`` (the pip path);
4. the source tree (``vla_steering_node/config`` and ``launch`` link to the top-level folders).
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "vla_steering_node"


def share_dirs() -> list[Path]:
    """The candidate share directories, in the order they are searched."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)))
    except (ImportError, LookupError, OSError, ValueError):  # no ament index, or AMENT_PREFIX_PATH unset
        pass
    here = Path(__file__).resolve().parent  # .../site-packages/vla_steering_node, or the source package
    if here.parent.name == "site-packages" and len(here.parents) > 4:
        candidates.append(here.parents[3] / "share" / PACKAGE)
    candidates += [Path(sys.prefix) / "share" / PACKAGE, here.parent]
    return candidates


def share_file(relative: str | Path) -> Path:
    """The installed file ``relative`` (e.g. ``config/steering_node.yaml``).

    Raises:
        FileNotFoundError: naming every place that was searched.
    """
    candidates = [directory / relative for directory in share_dirs()]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relative} is not installed: looked in {[str(c) for c in candidates]}")
