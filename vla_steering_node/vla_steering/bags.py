"""rosbag2 bags (MCAP storage) through ``rosbags``: write serialized messages, read them back.

Bags are directories with ``metadata.yaml`` and one ``.mcap`` file, readable by
``ros2 bag info/play`` on a distro and by Foxglove. Messages are stored as the CDR bytes that
DDS delivered, so recording never re-serialises. Message definitions come from rosbags'
ROS 2 Jazzy type store.
"""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)


class BagError(RuntimeError):
    """A bag that cannot be created or read."""


def check_writable(directory: Path, min_free_bytes: int = 64 * 2**20) -> None:
    """Refuse up front an output directory that cannot be created, written, or is (nearly) full."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write_test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as error:
        raise BagError(f"cannot write bags to {directory}: {error}") from error
    free = shutil.disk_usage(directory).free
    if free < min_free_bytes:
        raise BagError(f"only {free / 2**20:.0f} MiB free in {directory}; need at least "
                       f"{min_free_bytes / 2**20:.0f} MiB to record")


class BagWriter:
    """Thread-safe writer of serialized messages into one new MCAP bag; counts what it wrote."""

    def __init__(self, path: Path, topics: Sequence[tuple[str, str]]):
        if path.exists():
            raise BagError(f"bag {path} already exists")
        check_writable(path.parent)
        self.path = path
        self._writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections = {topic: self._writer.add_connection(topic, msgtype, typestore=TYPESTORE)
                             for topic, msgtype in topics}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.closed = False

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        with self._lock:
            if self.closed:
                raise BagError(f"bag {self.path} is closed")
            self._writer.write(self._connections[topic], timestamp_ns, data)
            self.counts[topic] += 1

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self._writer.close()
                self.closed = True


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    timestamp_ns: int
    message: object  # a rosbags dataclass with the ROS message's fields


ANCHOR_TOPIC = "/action_chunk"  # every recorded run has it; its prefix is the run's namespace


def bag_namespace(topics: Sequence[str]) -> str:
    """The namespace a run was recorded under ("" or e.g. "/robot1"), from its action topic.

    Raises:
        BagError: when the bag holds the action topics of several namespaces.
    """
    namespaces = sorted({t[: -len(ANCHOR_TOPIC)] for t in topics if t.endswith(ANCHOR_TOPIC)})
    if len(namespaces) > 1:
        raise BagError(f"the bag holds runs of several namespaces {namespaces}; read one with namespace=")
    return namespaces[0] if namespaces else ""


def read_bag(path: str | Path, topics: Sequence[str] | None = None,
             namespace: str | None = None) -> Iterator[BagMessage]:
    """Messages in recording order (deserialised), with topics relative to the run's namespace.

    A run recorded under a namespace (``/robot1/ee_pose``) reads as ``/ee_pose``; global topics
    (``/diagnostics``, ``/clock``) as they are. ``namespace`` None: found from the bag
    (:func:`bag_namespace`); ``topics`` are relative names.
    """
    path = Path(path)
    if not (path / "metadata.yaml").exists():
        raise BagError(f"{path} is not a closed rosbag2 bag (no metadata.yaml)")
    with Reader(path) as reader:
        prefix = bag_namespace([c.topic for c in reader.connections]) if namespace is None else \
            ("/" + namespace.strip("/") if namespace.strip("/") else "")

        def relative(topic: str) -> str:
            return topic[len(prefix):] if prefix and topic.startswith(prefix + "/") else topic

        connections = [c for c in reader.connections if topics is None or relative(c.topic) in topics]
        for connection, timestamp, raw in reader.messages(connections=connections):
            yield BagMessage(relative(connection.topic), connection.msgtype, timestamp,
                             TYPESTORE.deserialize_cdr(raw, connection.msgtype))


def bag_counts(path: str | Path) -> dict[str, int]:
    """Message count per topic (as recorded, namespace included), from the bag's metadata."""
    with Reader(Path(path)) as reader:
        return {c.topic: c.msgcount for c in reader.connections}
