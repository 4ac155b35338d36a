"""rosbag2 bags (MCAP storage) through ``rosbags``: write serialized messages, read them back.

Bags are directories with ``metadata.yaml`` and one ``.mcap`` file, readable by
``ros2 bag info/play`` on a distro and by Foxglove. Messages are stored as the CDR bytes that
DDS delivered, so recording never re-serialises. Message definitions come from rosbags'
ROS 2 Jazzy type store.

Nothing written is lost to a fault: every message is on disk when ``write`` returns (its own
MCAP chunk, flushed), so a recording killed (SIGKILL, power to the process) or stopped by a full
disk holds every message written before the fault; :func:`reindex` (``vla-steer reindex``,
like ``ros2 bag reindex``) makes such a bag readable again.
"""

from __future__ import annotations

import shutil
import struct
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from mcap.exceptions import InvalidMagic, McapError
from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

from vla_steering import contract

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
    """Thread-safe writer of serialized messages into one new MCAP bag; counts what it wrote.

    Each message is its own chunk, flushed to the file before ``write`` returns (rosbags buffers
    a MiB otherwise). After a write error (disk full) the bag takes no more messages: what is in
    the file stays readable through :func:`reindex`.
    """

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
        self.fault: OSError | None = None

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        """Write one message through to the file.

        Raises:
            BagError: the bag is closed, or an earlier write failed.
            OSError: this write failed (the bag takes no more).
        """
        with self._lock:
            if self.closed or self.fault is not None:
                raise BagError(f"bag {self.path} is {'closed' if self.closed else f'stopped: {self.fault}'}")
            try:
                self._writer.write(self._connections[topic], timestamp_ns, data)
                storage = self._writer.storage  # rosbags' McapWriter (pinned version): end the chunk, flush it
                storage.close_chunk()
                storage.bio.flush()
            except OSError as error:
                self.fault = error
                raise
            self.counts[topic] += 1

    def close(self) -> None:
        """Write the summary and metadata.yaml; a no-op when closed. A bag whose writing failed is
        left for :func:`reindex` (closing it could only fail again).

        Raises:
            BagError: the summary could not be written (the messages stay in the file: reindex).
        """
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.fault is None:
                try:
                    self._writer.close()
                    return
                except OSError as error:
                    self.fault = error
            with suppress(OSError):
                self._writer.storage.bio.close()
            raise BagError(f"bag {self.path} was not closed ({self.fault}); its {sum(self.counts.values())} "
                           f"messages are in the file: `vla-steer reindex {self.path}` makes it readable")


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    timestamp_ns: int
    message: object  # a rosbags dataclass with the ROS message's fields


ANCHOR_TOPIC = contract.ACTION_CHUNK.in_bag  # every recorded run has it; its prefix is the run's namespace


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
            try:
                message = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
            except SerdeError as error:
                raise BagError(f"{path}: the {connection.msgtype} message on {connection.topic} at "
                               f"{timestamp / 1e9:.3f} s cannot be decoded ({error})") from error
            yield BagMessage(relative(connection.topic), connection.msgtype, timestamp, message)


def bag_counts(path: str | Path) -> dict[str, int]:
    """Message count per topic (as recorded, namespace included), from the bag's metadata."""
    with Reader(Path(path)) as reader:
        return {c.topic: c.msgcount for c in reader.connections}


def reindex(path: str | Path) -> dict[str, int]:
    """Make a bag whose recording did not close (killed, disk full) readable: every complete
    message in its MCAP file is rewritten into a closed bag in place (summary and metadata.yaml),
    a torn last record dropped. A closed bag is left as it is. Returns the message count per topic.

    Raises:
        BagError: ``path`` holds no single MCAP file, or it is not an MCAP recording.
    """
    path = Path(path)
    if (path / "metadata.yaml").exists():
        return bag_counts(path)
    files = sorted(path.glob("*.mcap"))
    if len(files) != 1:
        raise BagError(f"{path} holds {len(files)} .mcap files; a bag to reindex holds one")
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    for record in _complete_records(files[0]):  # first pass: the topics
        if isinstance(record, Schema):
            schemas[record.id] = record.name
        elif isinstance(record, Channel):
            channels[record.id] = (record.topic, schemas[record.schema_id])
    staging = path.parent / f".{path.name}.reindexing"
    shutil.rmtree(staging, ignore_errors=True)
    bag = BagWriter(staging / path.name, list(channels.values()))
    for record in _complete_records(files[0]):  # second pass: the messages, streamed
        if isinstance(record, Message):
            bag.write(channels[record.channel_id][0], record.log_time, record.data)
    bag.close()
    files[0].unlink()
    for rewritten in (staging / path.name).iterdir():
        rewritten.replace(path / rewritten.name)
    shutil.rmtree(staging)
    return bag_counts(path)


def _complete_records(file: Path) -> Iterator[object]:
    """The MCAP file's records up to the first torn one (where a recording was cut off)."""
    with file.open("rb") as stream:
        reader = StreamReader(stream, record_size_limit=2**31).records
        try:
            yield from reader
        except InvalidMagic as error:
            raise BagError(f"{file} is not an MCAP recording") from error
        except (McapError, struct.error):
            return  # torn: a record (or its length) only partly written
