"""An OpenCV camera (device index, stream URL or video file) published with the image contract.

Frames are published upright as ``rgb8`` on ``camera/<name>/image_raw`` (sensor-data QoS), at
most at ``rate_hz``; a camera that cannot be opened stops the node at start with the reason, and
one that stops delivering is reopened (a video file loops, for dry runs).
"""

from __future__ import annotations

import threading
import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image

from vla_steering import contract
from vla_steering_node.conversions import qos_profile, rgb_to_image


def open_capture(source: str):
    import cv2

    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise ValueError(f"camera {source!r} cannot be opened (a device index, a stream URL or a video file)")
    return capture


class CameraPublisher:
    def __init__(self, node: Node, name: str, source: str, rate_hz: float):
        self.node, self.source, self.period = node, source, 1.0 / rate_hz
        self.capture = open_capture(source)
        topic = contract.camera(name)
        self.publisher = node.create_publisher(Image, topic.name, qos_profile(topic))
        self.frame_id = f"{name}_camera"
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        import cv2

        while self.running:
            start = time.monotonic()
            ok, frame = self.capture.read()
            if not ok:
                self.node.get_logger().warning(f"camera {self.source!r} delivered no frame: reopening",
                                               throttle_duration_sec=5.0)
                self.capture.release()
                time.sleep(0.5)
                try:
                    self.capture = open_capture(self.source)
                except ValueError:
                    continue
                continue
            rgb = np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            self.publisher.publish(rgb_to_image(rgb, self.node.get_clock().now().to_msg(), self.frame_id))
            time.sleep(max(0.0, self.period - (time.monotonic() - start)))

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=2.0)
        self.capture.release()
