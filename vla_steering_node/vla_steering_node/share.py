"""The one way to find a vla-steer package's installed data (config, launch files, dictionaries).

Wherever a package runs from, the data that came with the running code is found first:

1. where the package's module is: installed (``<prefix>/lib/pythonX.Y/site-packages/<package>``),
   its prefix's ``share/<package>`` (a pip install, a colcon install, sourced or not); in a source
   tree, the package's folder (which links ``config`` / ``launch`` to the top-level folders);
2. then the ament index (``AMENT_PREFIX_PATH``: a sourced colcon install or a ROS distro);
3. then this environment's ``sys.prefix/share`` (the pip path).

Every package's Python package has the package's name, so the package's module locates it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def share_dirs(package: str) -> list[Path]:
    """The candidate share directories of ``package``, in the order they are searched."""
    candidates = []
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.origin:
        here = Path(spec.origin).resolve().parent  # .../site-packages/<package>, or the source package
        installed = here.parent.name == "site-packages" and len(here.parents) > 4
        candidates.append(here.parents[3] / "share" / package if installed else here.parent)
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(package)))
    except (ImportError, LookupError, OSError, ValueError):  # no ament index, or AMENT_PREFIX_PATH unset
        pass
    candidates.append(Path(sys.prefix) / "share" / package)
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
