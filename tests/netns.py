"""A network namespace with only loopback up, so that what runs in it can reach nothing beyond 127.0.0.0/8.

Ray picks the machine's own address and binds its ports on every interface; inside such a
namespace there is no interface but ``lo``, so a Ray test cluster runs entirely on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def loopback_namespace() -> Iterator[list[str]]:
    """Yields the command prefix that runs a command inside a fresh loopback-only namespace; deletes it after."""
    name = f"vlasteer{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here (needs root and iproute2): {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        links = subprocess.run(["ip", "netns", "exec", name, "ip", "-o", "link", "show", "up"], check=True,
                               capture_output=True, text=True).stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"], links
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
