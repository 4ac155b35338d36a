"""Grippers on a UR arm, and the mapping from the action's gripper dimension to a command.

The action's last dimension follows LIBERO: -1 opens, +1 closes. Interfaces, chosen by the
driver's ``gripper`` parameter:

* ``none`` (default): the gripper dimension is ignored;
* ``robotiq_socket``: a Robotiq gripper through its URCap's ASCII socket on the controller (port
  63352: ``SET ACT 1``, ``SET GTO 1``, ``SET POS n`` -> ``ack``; ``GET STA`` -> ``STA 3`` once
  activated); the action maps linearly to a position 0 (open) .. 255 (closed);
* ``digital_output``: a standard or tool digital output through ``ur_rtde``'s IO interface; the
  output is high while the action asks to close (> 0).

:func:`gripper_command` turns an action value into the command to send; a command goes out only
when it differs from the last one sent, so a steady gripper costs nothing per servo tick, and a
:class:`GripperWorker` applies it in its own thread, so a slow or failing gripper never holds up
the servo loop.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

INTERFACES = ("none", "robotiq_socket", "digital_output")
OUTPUT_BANKS = ("standard", "tool")


@dataclass(frozen=True)
class GripperConfig:
    interface: str = "none"
    port: int = 63352  # Robotiq URCap socket
    output_bank: str = "standard"  # digital_output: standard (0-7) or tool (0-1)
    output_pin: int = 0

    def __post_init__(self) -> None:
        if self.interface not in INTERFACES:
            raise ValueError(f"gripper must be one of {', '.join(INTERFACES)}, got {self.interface!r}")
        if self.output_bank not in OUTPUT_BANKS:
            raise ValueError(f"gripper_output_bank must be standard or tool, got {self.output_bank!r}")
        pins = 8 if self.output_bank == "standard" else 2
        if not 0 <= self.output_pin < pins:
            raise ValueError(f"gripper_output_pin must be in 0..{pins - 1} for the {self.output_bank} bank, "
                             f"got {self.output_pin}")


def gripper_command(interface: str, action: float) -> int | None:
    """The command for an action value in [-1, 1]: a Robotiq position (0 open .. 255 closed), a
    digital level (1 close, 0 open), or None (no gripper, or a non-finite value)."""
    if interface == "none" or not math.isfinite(action):
        return None
    action = min(1.0, max(-1.0, action))
    if interface == "robotiq_socket":
        return round((action + 1.0) / 2.0 * 255)
    return int(action > 0.0)


class RobotiqSocket:
    """A Robotiq gripper through the URCap's socket on the controller."""

    def __init__(self, host: str, port: int = 63352, timeout: float = 2.0, activation_timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = self.sock.makefile("rb")
        if self.get("STA") != 3:
            self.set("ACT", 1)
            deadline = time.monotonic() + activation_timeout
            while self.get("STA") != 3:
                if time.monotonic() > deadline:
                    raise RuntimeError("the Robotiq gripper did not finish activating")
                time.sleep(0.05)
        self.set("GTO", 1)

    def _ask(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        reply = self.reader.readline()
        if not reply:
            raise RuntimeError("the Robotiq socket closed")
        return reply.decode(errors="replace").strip()

    def set(self, variable: str, value: int) -> None:
        reply = self._ask(f"SET {variable} {value}")
        if reply != "ack":
            raise RuntimeError(f"Robotiq refused SET {variable} {value}: {reply!r}")

    def get(self, variable: str) -> int:
        reply = self._ask(f"GET {variable}").split()
        if len(reply) != 2 or reply[0] != variable or not reply[1].lstrip("-").isdigit():
            raise RuntimeError(f"unexpected Robotiq reply to GET {variable}: {' '.join(reply)!r}")
        return int(reply[1])

    def move(self, position: int) -> None:
        self.set("POS", position)

    def close(self) -> None:
        self.sock.close()


class GripperWorker:
    """Applies the latest requested gripper command in its own thread; a request that arrives
    while one is being applied replaces any older pending one. The last failure is kept (empty
    after a success) for the driver to report."""

    def __init__(self, apply: Callable[[int], None]):
        self.apply = apply
        self.request: int | None = None
        self.error = ""
        self.wake = threading.Condition()
        threading.Thread(target=self.run, daemon=True).start()

    def submit(self, command: int) -> None:
        with self.wake:
            self.request = command
            self.wake.notify()

    def run(self) -> None:
        while True:
            with self.wake:
                while self.request is None:
                    self.wake.wait()
                command, self.request = self.request, None
            try:
                self.apply(command)
                self.error = ""
            except (OSError, RuntimeError) as error:
                self.error = f"gripper command {command} failed: {error}"
