"""bag_recorder: records the topic contract into one rosbag2 MCAP bag (works without rosbag2).

Every message received is written as the CDR bytes DDS delivered (``raw`` subscriptions), with
the node clock's time (sim time under ``use_sim_time``). ``split: run`` (default) writes one bag;
``split: episode`` starts a new bag at each ``start`` episode event, named
``<bag_name>_<suite>_t<task>_i<init state>_<time>``. ``split: request`` records into the bag
``bag_name`` names, live: setting it closes the current bag and opens that one, setting it to ""
closes it and records nothing until the next name (what arrives meanwhile is counted as not
recorded) — a runner that keeps the recorder across episodes names each episode's bag before
the episode starts and closes it after its end event. A "" set while the bag holds an episode's
start event but not yet its end event closes the bag once that end event is written (the runner
saw the event on its own subscription; it may not have reached the recorder yet). Counts per topic are in the bag's
metadata. SIGINT / SIGTERM close the bag (a second signal waits for the close); every message is
on disk as soon as it is written, so a killed recorder, or one whose disk filled up, leaves a bag
that ``vla-steer reindex`` makes readable with every message written before the fault. An
unwritable or full output directory stops the node at start with the reason.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node

from vla_steering import contract
from vla_steering.bags import BagError, BagWriter
from vla_steering_node import process
from vla_steering_node.conversions import message_class, qos_profile

RECORDER_DEPTH = 200  # deep queues: the recorder must keep up with bursts
SPLITS = ("run", "episode", "request")


def recorded_qos(name: str, msgtype: str):
    """The contract's QoS for a topic (deep), reliable for a topic the contract does not name."""
    topic = contract.by_bag_name(name if name.startswith("/") else "/" + name) or \
        contract.Topic(name, msgtype, "reliable", RECORDER_DEPTH)
    return qos_profile(topic, max(topic.depth, RECORDER_DEPTH))


class BagRecorder(Node):
    def __init__(self) -> None:
        super().__init__("bag_recorder")
        read_only = ParameterDescriptor(read_only=True)
        self.declare_parameter("output_dir", "bags", read_only)
        self.declare_parameter("split", "run", ParameterDescriptor(
            read_only=True, description="run: one bag; episode: a new bag at each episode start event; "
                                        "request: the bag bag_name names, live"))
        split = self.get_parameter("split").value
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.declare_parameter("bag_name", "", ParameterDescriptor(
            read_only=split != "request",
            description="bag directory name; default run_<wall time>" if split != "request" else
            "the bag to record into; a set closes the current one and opens this one ('' = record nothing)"))
        self.declare_parameter("topics", [t.entry() for t in contract.RECORDED], ParameterDescriptor(
            read_only=True, description="topic:package/msg/Type entries"))
        name = self.get_parameter("bag_name").value
        self.name = name if split == "request" else name or time.strftime("run_%Y%m%d_%H%M%S")
        self.output_dir = Path(self.get_parameter("output_dir").value).expanduser()
        topics = []
        for entry in self.get_parameter("topics").value:
            topic, _, msgtype = entry.rpartition(":")
            if not topic or msgtype.count("/") != 2:
                raise ValueError(f"topic entry {entry!r} is not topic:package/msg/Type")
            topics.append((self.resolve_topic_name(topic), msgtype))
        self.topics = topics
        self.bag: BagWriter | None = None
        self.bags: list[BagWriter] = []
        self.episode_open = False  # split request: the bag holds an episode's start event, not yet its end
        self.close_at_end = False  # "" was set during that episode: close once its end event is written
        self.open(self.name)
        self.received: Counter[str] = Counter()
        self.unrecorded: Counter[str] = Counter()  # received while no bag was named (split: request)
        self.events_topic = self.resolve_topic_name(contract.EPISODE_EVENTS.name)
        for (topic, msgtype), entry in zip(topics, self.get_parameter("topics").value):
            relative = entry.rpartition(":")[0]
            self.create_subscription(message_class(msgtype), relative, lambda data, t=topic: self.on_message(t, data),
                                     recorded_qos(relative, msgtype), raw=True)
        if split == "request":
            self.add_on_set_parameters_callback(self.validate_bag_name)
            self.add_post_set_parameters_callback(self.on_bag_name)
        self.get_logger().info(f"recording {len(topics)} topics into "
                               f"{self.bag.path if self.bag else 'the bag bag_name will name'}")

    def open(self, name: str) -> None:
        """Close the current bag; record into ``output_dir/name`` from now on (nothing, for "")."""
        self.close_current()
        self.episode_open = self.close_at_end = False
        if name:
            self.bag = BagWriter(self.output_dir / name, self.topics)
            self.bags.append(self.bag)

    def validate_bag_name(self, parameters) -> SetParametersResult:
        for p in parameters:
            if p.name == "bag_name" and (not isinstance(p.value, str) or "/" in p.value or p.value in (".", "..")):
                return SetParametersResult(successful=False, reason="bag_name must be a directory name (no '/')")
            if p.name == "bag_name" and p.value and (self.output_dir / p.value).exists():
                return SetParametersResult(successful=False, reason=f"{self.output_dir / p.value} exists already")
        return SetParametersResult(successful=True)

    def on_bag_name(self, parameters) -> None:
        for p in parameters:
            if p.name == "bag_name":
                if not p.value and self.bag is not None and self.episode_open:
                    self.close_at_end = True
                    self.get_logger().info(f"closing {self.bag.path} after its episode's end event")
                    continue
                try:
                    self.open(p.value)
                except BagError as error:  # e.g. the disk is full: say so, record nothing until another name
                    self.get_logger().error(str(error))
                self.get_logger().info(f"recording into {self.bag.path}" if self.bag else "recording paused")

    def maybe_split(self, event) -> None:
        """At an episode's start event, close the current bag and open the episode's own."""
        if event.message != contract.EPISODE_STARTED:
            return
        self.open(_episode_bag_name(self.name, event))
        self.get_logger().info(f"episode started: recording into {self.bag.path}")

    def track_episode(self, event) -> None:
        """split: request: note an episode's start and end in the current bag; close it at the end if asked."""
        if event.message == contract.EPISODE_STARTED:
            self.episode_open = True
        elif event.message in contract.EPISODE_OUTCOMES:
            self.episode_open = False
            if self.close_at_end:
                self.open("")
                self.get_logger().info("episode ended: recording paused")

    def close_current(self) -> None:
        bag, self.bag = self.bag, None
        if bag is None:
            return
        try:
            bag.close()
        except BagError as error:
            self.get_logger().error(str(error))

    def on_message(self, topic: str, data: bytes) -> None:
        self.received[topic] += 1
        split = self.get_parameter("split").value
        event = _event(data) if topic == self.events_topic and split != "run" else None
        if event is not None and split == "episode":
            self.maybe_split(event)
        if self.bag is None:
            self.unrecorded[topic] += 1
            return
        try:
            self.bag.write(topic, self.get_clock().now().nanoseconds, data)
        except (BagError, OSError) as error:  # e.g. the disk filled up: say so, keep what is written
            self.get_logger().error(f"could not write a {topic} message: {error}", throttle_duration_sec=2.0)
        if event is not None and split == "request":
            self.track_episode(event)


def _event(data: bytes):
    from diagnostic_msgs.msg import DiagnosticStatus
    from rclpy.serialization import deserialize_message

    return deserialize_message(data, DiagnosticStatus)


def _episode_bag_name(base: str, event) -> str:
    values = {kv.key: kv.value for kv in event.values}
    return (f"{base}_{values.get('suite', 'episode')}_t{values.get('task_id', 'x')}_i{values.get('init_state', 'x')}"
            f"_{time.strftime('%Y%m%d_%H%M%S')}")


def idle(node: BagRecorder) -> None:
    while rclpy.ok():
        time.sleep(0.1)


def close_bag(node: BagRecorder) -> None:
    node.close_current()
    written: Counter[str] = Counter()
    for bag in node.bags:
        written.update(bag.counts)
    counts = ", ".join(f"{t} {n}" for t, n in sorted(written.items()))
    lost = {t: n - written[t] - node.unrecorded[t] for t, n in node.received.items()
            if n != written[t] + node.unrecorded[t]}
    verdict = f"NOT WRITTEN: {lost}" if lost else "every received message written"
    if node.unrecorded:
        verdict += f"; received while no bag was named, not recorded: {dict(node.unrecorded)}"
    paths = ", ".join(str(b.path) for b in node.bags)
    print(f"[bag_recorder] closed {paths}: {counts or 'no messages'}; {verdict}", flush=True)


def main(args=None) -> None:
    process.run(BagRecorder, idle, (BagError, ValueError, ImportError, AttributeError), "bag_recorder",
                cleanup=close_bag, args=args)


if __name__ == "__main__":
    main()
