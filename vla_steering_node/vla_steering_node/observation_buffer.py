"""The newest inputs of each kind, assembled into one observation per inference (no rclpy).

An instruction is *state* (latched, never stale); an empty one leaves the last good one
in place. Camera images and the robot state are streams, stale when older than a timeout.
A new primary-camera image marks the buffer fresh; if the previous fresh image was never
consumed, it counts as dropped. An image whose stamp is that of the observation already
answered (a bridge re-sending an unanswered observation while a slow policy still works on
it) is kept but does not mark the buffer fresh: one observation, one inference. ``clear`` forgets
everything (a new episode: its first observation may carry a stamp the last episode answered).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from vla_steering.policies import Observation


class NotReady(Exception):
    """No observation can be assembled now; the message says why."""


@dataclass
class Stamped:
    value: np.ndarray
    stamp_ns: int  # the message's header stamp (node clock: sim time under use_sim_time)


class ObservationBuffer:
    def __init__(self, cameras: list[str], stale_after_ns: int):
        if not cameras:
            raise ValueError("at least one camera is needed")
        self.cameras = list(cameras)
        self.stale_after_ns = stale_after_ns
        self._images: dict[str, Stamped] = {}
        self._state: Stamped | None = None
        self._instruction = ""
        self._fresh = False
        self._answered_ns: int | None = None  # the primary stamp of the last observation taken
        self._fresh_ns: int | None = None  # the primary stamp that made the buffer fresh
        self._lock = threading.Condition()
        self.dropped = 0
        self.repeats = 0  # re-sent observations not answered twice

    def put_image(self, camera: str, rgb: np.ndarray, stamp_ns: int) -> None:
        with self._lock:
            self._images[camera] = Stamped(rgb, stamp_ns)
            if camera == self.cameras[0]:
                if stamp_ns == self._answered_ns or (self._fresh and stamp_ns == self._fresh_ns):
                    self.repeats += 1
                    return
                self._fresh_ns = stamp_ns
                if self._fresh:
                    self.dropped += 1
                self._fresh = True
                self._lock.notify_all()

    def put_state(self, state: np.ndarray, stamp_ns: int) -> None:
        with self._lock:
            self._state = Stamped(state, stamp_ns)

    def put_instruction(self, text: str) -> bool:
        """Keep ``text`` as the instruction; an empty one is ignored (False) and the last good one stays."""
        if not text.strip():
            return False
        with self._lock:
            self._instruction = text
        return True

    def clear(self, instruction: str = "") -> None:
        """Forget every input and which observation was answered; ``instruction`` (if any) is the task again."""
        with self._lock:
            self._images.clear()
            self._state = None
            self._instruction = instruction if instruction.strip() else ""
            self._fresh = False
            self._answered_ns = self._fresh_ns = None

    def wait_fresh(self, timeout_s: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._fresh, timeout=timeout_s)

    def take(self, now_ns: int) -> tuple[Observation, int]:
        """(observation, primary image stamp) from the newest inputs; clears the fresh mark."""
        with self._lock:
            self._fresh = False
            if not self._instruction.strip():
                raise NotReady("no instruction received yet (or it is empty)")
            missing = [c for c in self.cameras if c not in self._images]
            if missing:
                raise NotReady(f"no image yet from camera(s) {missing}")
            if self._state is None:
                raise NotReady("no robot state received yet")
            for name, item in [*((c, self._images[c]) for c in self.cameras), ("robot state", self._state)]:
                age = now_ns - item.stamp_ns
                if age > self.stale_after_ns:
                    raise NotReady(f"{name} is stale ({age / 1e9:.2f} s old)")
            images = {c: self._images[c].value for c in self.cameras}
            self._answered_ns = self._images[self.cameras[0]].stamp_ns
            return Observation(images, self._state.value, self._instruction), self._answered_ns
