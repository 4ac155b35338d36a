"""The one way to find a vla-steer package's installed data (config, launch files, dictionaries).

Wherever a package runs from, its ``share/<package>`` is found, in order:

1. through the ament index (``AMENT_PREFIX_PATH``: a sourced colcon install or a ROS distro);
2. beside the package's own install prefix (``<prefix>/lib/pythonX.Y/site-packages/<package>``
   -> ``<prefix>/share/<package>``: a pip install, or a colcon install whose setup script was
   not sourced);
3. this environment's ``sys.prefix/share`` (the pip path);
4. the source tree (each package folder links ``config`` / ``launch`` to the top-level folders).

Every package's Python package has the package's name, so the package's module locates it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def share_dirs(package: str) -> list[Path]:
    """The candidate share directories of ``package``, in the order they are searched."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(package)))
    except (ImportError, LookupError, OSError, ValueError):  # no ament index, or AMENT_PREFIX_PATH unset
        pass
    spec = importlib.util.find_spec(package)
    here = Path(spec.origin).resolve().parent if spec and spec.origin else None  # .../site-packages/<package>
    if here is not None and here.parent.name == "site-packages" and len(here.parents) > 4:
        candidates.append(here.parents[3] / "share" / package)
    candidates.append(Path(sys.prefix) / "share" / package)
    if here is not None:
        candidates.append(here.parent)  # the source tree's package folder
    return candidates


def share_file(package: str, relative: str | Path) -> Path:
    """The installed file ``relative`` of ``package`` (e.g. ``config/steering_node.yaml``).

    Raises:
        FileNotFoundError: naming every place that was searched.
    """
    candidates = [directory / relative for directory in share_dirs(package)]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relative} of {package} is not installed: looked in {[str(c) for c in candidates]}")
