"""A protocol-level UR controller emulator that the real ``ur_rtde`` client connects to.

``python -m ur5_driver.emulator [--host 127.0.0.1] [--log commands.jsonl] [--e-series]``

Backed by the kinematic UR5 model (:mod:`ur5_driver.kinematics`). It serves:

* RTDE on 30004: big-endian frames (uint16 size including the 3-byte header, uint8 type):
  'V' protocol version (reply 1 = accepted), 'v' controller version (e-Series 5.x -> the client
  uses 500 Hz, CB3 3.x -> 125 Hz), 'O' output setup (double frequency + names; reply recipe id +
  types, NOT_FOUND for an unknown name), 'I' input setup (reply recipe id + types, IN_USE if
  another connection owns a field), 'S'/'P' start/pause, then 'U' data packages streamed at the
  requested frequency; recipe ids are handed out 1, 2, 3... in order, per connection, for outputs
  and for inputs each (ur_rtde numbers its input recipes from 1);
* the dashboard on 29999 (greeting, then one reply line per command);
* the script port 30003: the control script ur_rtde uploads; after it, ``runtime_state`` is
  PLAYING (2);
* a Robotiq gripper's URCap socket on 63352 (``SET ACT 1`` / ``SET GTO 1`` / ``SET POS n`` ->
  ``ack``, ``GET STA`` -> ``STA 3`` once activated), and the digital outputs (standard and tool)
  that RTDE's ``*_digital_output_mask`` inputs set, reported in ``actual_digital_output_bits``.

The control script's command protocol runs over registers: command id in
``input_int_register_0``, doubles from ``input_double_register_0``, script state in
``output_int_register_0`` (1 ready, 2 done); with the client's upper-range flag everything moves
up by 24 (``input_int_register_24`` ...), which the emulator follows. Every command received (and
every gripper move and digital output change) is appended to the ``--log`` JSON-lines file, so
tests can check everything that reached the "robot". A protective
stop (``touch <log>.protective_stop``, or the dashboard command ``emulator protective stop``)
sets bit 2 of ``safety_status_bits``; the arm then ignores motion until ``unlock protective stop``.
An emergency stop (``touch <log>.emergency_stop``, or ``emulator emergency stop``) sets bit 7 and
safety mode ROBOT_EMERGENCY_STOP; the dashboard cannot unlock it (on a robot the button is
released by hand): ``emulator release emergency stop`` stands for that. While
``<log>.gripper_fault`` exists the Robotiq gripper refuses every ``SET``.
It must run in its own process: the ur_rtde bindings hold the GIL.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np

from ur5_driver.kinematics import IKError, fk, ik

HOME = np.array([0.0, -1.57, 1.57, -1.57, -1.57, 0.0])
COMMANDS = {0: "clear", 1: "moveJ", 3: "moveL", 9: "speedJ", 10: "speedL", 11: "servoJ", 15: "speedStop",
            16: "servoStop", 24: "servoL", 26: "getStepTime", 33: "stopL", 34: "stopJ", 35: "setWatchdog",
            255: "stopScript"}
REALTIME = {9, 10, 11, 24}  # the motion commands ur_rtde does not wait for
SAFETY_MODES = {1: "NORMAL", 3: "PROTECTIVE_STOP", 7: "ROBOT_EMERGENCY_STOP"}
VECTOR6D = {"target_q", "target_qd", "target_qdd", "target_current", "target_moment", "actual_q", "actual_qd",
            "actual_current", "joint_control_output", "actual_TCP_pose", "actual_TCP_speed", "actual_TCP_force",
            "target_TCP_pose", "target_TCP_speed", "joint_temperatures", "actual_joint_voltage", "ft_raw_wrench",
            "tcp_offset", "external_force_torque", "payload_inertia"}
VECTOR3D = {"actual_tool_accelerometer", "payload_cog", "elbow_position", "elbow_velocity"}
UINT64 = {"actual_digital_input_bits", "actual_digital_output_bits"}
UINT32 = {"runtime_state", "robot_status_bits", "safety_status_bits", "output_bit_registers0_to_31",
          "output_bit_registers32_to_63", "analog_io_types", "tool_mode", "script_control_line"}
INT32 = {"robot_mode", "safety_mode", "safety_status", "tool_output_voltage"}
DOUBLE = {"timestamp", "actual_execution_time", "speed_scaling", "target_speed_fraction", "actual_momentum",
          "actual_main_voltage", "actual_robot_voltage", "actual_robot_current", "standard_analog_input0",
          "standard_analog_input1", "standard_analog_output0", "standard_analog_output1", "payload",
          "io_current", "tool_output_current", "tool_temperature", "tool_analog_input0", "tool_analog_input1"}
PACK = {"DOUBLE": "d", "VECTOR6D": "6d", "VECTOR3D": "3d", "UINT64": "Q", "UINT32": "I", "INT32": "i",
        "VECTOR6INT32": "6i", "UINT8": "B", "BOOL": "?"}


def rtde_type(name: str) -> str | None:
    """The RTDE type of a variable name, None if this controller has no such variable."""
    for names, kind in ((VECTOR6D, "VECTOR6D"), (VECTOR3D, "VECTOR3D"), (UINT64, "UINT64"), (UINT32, "UINT32"),
                        (INT32, "INT32"), (DOUBLE, "DOUBLE")):
        if name in names:
            return kind
    if name == "joint_mode":
        return "VECTOR6INT32"
    for prefix, kind in (("input_int_register_", "INT32"), ("output_int_register_", "INT32"),
                         ("input_double_register_", "DOUBLE"), ("output_double_register_", "DOUBLE"),
                         ("input_bit_register_", "BOOL"), ("output_bit_register_", "BOOL")):
        if name.startswith(prefix) and name[len(prefix):].isdigit() and int(name[len(prefix):]) < 48:
            return kind
    inputs = {"speed_slider_mask": "UINT32", "speed_slider_fraction": "DOUBLE", "standard_digital_output_mask": "UINT8",
              "standard_digital_output": "UINT8", "configurable_digital_output_mask": "UINT8",
              "configurable_digital_output": "UINT8", "tool_digital_output_mask": "UINT8",
              "tool_digital_output": "UINT8", "standard_analog_output_mask": "UINT8",
              "standard_analog_output_type": "UINT8", "input_bit_registers0_to_31": "UINT32",
              "input_bit_registers32_to_63": "UINT32"}
    return inputs.get(name)


class Controller:
    """The emulated arm and controller state, shared by the servers (one lock)."""

    def __init__(self, log: Path | None, e_series: bool):
        self.lock = threading.Lock()
        self.q = HOME.copy()
        self.target_q = HOME.copy()
        self.qd = np.zeros(6)
        self.e_series = e_series
        self.robot_mode = 7  # RUNNING
        self.safety_mode = 1  # NORMAL
        self.protective_stop = False
        self.emergency_stop = False
        self.runtime_state = 1  # STOPPED until a program is uploaded or played
        self.registers: dict[str, float] = {}
        self.script_state = 1
        self.last_command = 0
        self.log = log
        self.input_owner: dict[str, int] = {}
        self.start = time.monotonic()
        self.watchdog_s = 0.0  # the control script's rtde_set_watchdog on the command register, "stop"
        self.last_command_input = time.monotonic()
        self.max_joint_speed = 3.0  # rad/s, what the emulated joints can do
        self.offset = 0  # register range the client uses (0, or 24 with its upper-range flag)
        self.digital_outputs = 0  # standard 0-7, configurable 8-15, tool 16-17
        self.gripper = {"ACT": 0, "GTO": 0, "POS": 0, "SPE": 255, "FOR": 150}
        self.gripper_fault = False  # the gripper refuses every SET while it lasts
        self.speed: tuple[str, np.ndarray] | None = None  # speedJ / speedL: a joint or TCP velocity held

    # ------------------------------------------------------------------ motion
    def step(self, dt: float) -> None:
        with self.lock:
            if self.watchdog_s and time.monotonic() - self.last_command_input > self.watchdog_s and \
                    self.runtime_state == 2:
                # no update of the command register in time: the program is stopped, the arm
                # holds, and commands do nothing until a new program runs
                self.stop_program()
                self.log_event({"command": "watchdog_expired"})
            if self.halted:
                self.target_q, self.speed = self.q.copy(), None
            if self.speed is not None:
                kind, velocity = self.speed
                if kind == "J":
                    self.target_q = self.q + velocity * dt
                else:
                    pose = fk(self.q)
                    try:
                        self.target_q = ik(np.concatenate([pose[:3] + velocity[:3] * dt, pose[3:]]), self.q)
                    except IKError:
                        self.speed = None
            move = np.clip(self.target_q - self.q, -self.max_joint_speed * dt, self.max_joint_speed * dt)
            self.q = self.q + move
            self.qd = move / dt

    def start_program(self) -> None:
        """A control program starts (uploaded to the script port, or played): no watchdog yet."""
        self.runtime_state, self.script_state, self.watchdog_s = 2, 1, 0.0
        self.last_command_input = time.monotonic()
        for offset in (0, 24):  # the script publishes its step time at once (getStepTime reads it)
            self.registers[f"output_double_register_{offset}"] = self.step_time

    def stop_program(self) -> None:
        """The program stops (and with it its watchdogs); the arm holds where it is."""
        self.runtime_state, self.watchdog_s, self.target_q = 1, 0.0, self.q.copy()
        self.speed = None

    @property
    def step_time(self) -> float:
        return 0.002 if self.e_series else 0.008

    @property
    def halted(self) -> bool:
        return self.protective_stop or self.emergency_stop

    def safety(self) -> tuple[int, int]:
        """(safety mode, safety status bits): NORMAL 1, PROTECTIVE_STOP 3, ROBOT_EMERGENCY_STOP 7;
        bit 0 normal mode, bit 2 protective stop, bit 7 emergency stop."""
        mode = 7 if self.emergency_stop else (3 if self.protective_stop else self.safety_mode)
        bits = (1 << 0 if mode == 1 else 0) | (1 << 2 if self.protective_stop else 0) | \
            (1 << 7 if self.emergency_stop else 0)
        return mode, bits

    def outputs(self) -> dict:
        """The named outputs of one data package (computed once per package, under the lock)."""
        q, pose = self.q, fk(self.q)
        safety_mode, safety_bits = self.safety()
        return {"timestamp": time.monotonic() - self.start, "actual_q": q, "target_q": self.target_q,
                "actual_qd": self.qd, "target_qd": self.qd, "actual_TCP_pose": pose,
                "target_TCP_pose": fk(self.target_q), "robot_mode": self.robot_mode,
                "safety_mode": safety_mode, "safety_status": safety_mode, "safety_status_bits": safety_bits,
                "robot_status_bits": 0b1111, "runtime_state": self.runtime_state, "speed_scaling": 1.0,
                "target_speed_fraction": 1.0, f"output_int_register_{self.offset}": self.script_state,
                "joint_mode": [253] * 6, "actual_digital_output_bits": self.digital_outputs}

    def output(self, outputs: dict, name: str):
        """One output's value: from :meth:`outputs`, a register the client wrote, or zero."""
        if name in outputs:
            return outputs[name]
        if name.startswith("output_") and name in self.registers:
            return self.registers[name]
        return {"VECTOR6D": np.zeros(6), "VECTOR3D": np.zeros(3), "VECTOR6INT32": [0] * 6}.get(rtde_type(name), 0)

    # ------------------------------------------------------------------ commands
    def apply_inputs(self, values: dict[str, float]) -> None:
        with self.lock:
            self.registers.update(values)
            for bank, shift in (("standard", 0), ("configurable", 8), ("tool", 16)):
                mask = int(values.get(f"{bank}_digital_output_mask", 0)) << shift
                if mask:
                    level = int(values.get(f"{bank}_digital_output", 0)) << shift
                    self.digital_outputs = (self.digital_outputs & ~mask) | (level & mask)
                    self.log_event({"command": "digital_output", "bits": self.digital_outputs})
            key = f"input_int_register_{self.offset}"
            if key not in values:
                return
            self.last_command_input = time.monotonic()  # what the watchdog watches (kickWatchdog writes 0)
            command = int(values[key])
            doubles = [float(self.registers.get(f"input_double_register_{self.offset + i}", 0.0))
                       for i in range(24)]
            self.record(command, doubles)
            self.execute(command, doubles)

    def record(self, command: int, doubles: list[float]) -> None:
        if command != 0:
            self.log_event({"command": COMMANDS.get(command, str(command)), "id": command, "doubles": doubles[:12]})

    def log_event(self, entry: dict) -> None:
        """Append one received command to the log, stamped (system-wide monotonic clock) with the
        arm's state when it arrived."""
        if self.log is None:
            return
        entry = {"t": time.monotonic(), **entry, "protective_stop": self.protective_stop,
                 "emergency_stop": self.emergency_stop,
                 "actual_tcp": fk(self.q).tolist()}
        with self.log.open("a") as out:
            out.write(json.dumps(entry) + "\n")

    def execute(self, command: int, d: list[float]) -> None:
        """Run one command of ur_rtde's control script; one it does not know stops the program, as a
        script error does on a controller (the client then sees that the program is not running)."""
        if command == 0:
            self.script_state = 1
            return
        moving = command in (1, 3, 9, 10, 11, 24)
        if moving and (self.halted or self.runtime_state != 2):
            self.script_state = 1 if command in REALTIME else 2
            return
        if command not in COMMANDS:
            self.log_event({"command": "unsupported", "id": command})
            self.stop_program()
            return
        done = 1 if command in REALTIME else 2  # real-time commands return at once
        if command in (1, 3, 11, 24):
            self.speed = None
        if command in (11, 1):  # servoJ / moveJ: joint target
            self.target_q = np.asarray(d[:6])
        elif command in (24, 3):  # servoL / moveL: pose target
            try:
                self.target_q = ik(np.asarray(d[:6]), self.q)
            except IKError:
                self.log_event({"command": "unreachable", "id": command})
                self.stop_program()  # a controller faults on an unreachable move; the client is told
                return
        elif command == 9:  # speedJ: hold a joint velocity until a stop or another motion
            self.speed = ("J", np.asarray(d[:6]))
        elif command == 10:  # speedL: hold a TCP linear velocity
            self.speed = ("L", np.asarray(d[:6]))
        elif command == 26:  # getStepTime: the controller's servo period, in output double register 0
            self.registers[f"output_double_register_{self.offset}"] = self.step_time
        elif command in (15, 16, 33, 34):  # stops
            self.target_q, self.speed = self.q.copy(), None
        elif command == 35:  # setWatchdog(min frequency): rtde_set_watchdog on the command register
            self.watchdog_s = 1.0 / d[0] if d[0] > 0 else 0.0
        elif command == 255:
            self.stop_program()
        self.script_state = done  # a moveJ / moveL is "done" at once; the arm then moves there
        self.last_command = command


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _frame(kind: str, payload: bytes) -> bytes:
    return struct.pack(">HB", 3 + len(payload), ord(kind)) + payload


class RTDEConnection:
    def __init__(self, controller: Controller, conn: socket.socket, ident: int):
        self.c, self.conn, self.ident = controller, conn, ident
        self.outputs: tuple[int, list[str], list[str], float] | None = None
        self.inputs: dict[int, tuple[list[str], list[str]]] = {}
        self.recipes = {"O": 0, "I": 0}  # ids per connection, outputs and inputs each 1, 2, 3... in order
        self.streaming = threading.Event()
        self.send_lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.conn.sendall(data)

    def serve(self) -> None:
        threading.Thread(target=self.stream, daemon=True).start()
        try:
            while True:
                size, kind = struct.unpack(">HB", _recv(self.conn, 3))
                self.handle(chr(kind), _recv(self.conn, size - 3))
        except (ConnectionError, OSError):
            pass
        finally:
            self.streaming.clear()
            with self.c.lock:
                for name in [n for n, owner in self.c.input_owner.items() if owner == self.ident]:
                    del self.c.input_owner[name]
            self.conn.close()

    def handle(self, kind: str, body: bytes) -> None:
        c = self.c
        if kind == "V":
            self.send(_frame("V", b"\x01"))
        elif kind == "v":
            major, minor = (5, 9) if c.e_series else (3, 15)
            self.send(_frame("v", struct.pack(">IIII", major, minor, 0, 0)))
        elif kind == "O":
            frequency = struct.unpack(">d", body[:8])[0]
            names = [n for n in body[8:].decode().split(",") if n]
            types = [rtde_type(n) or "NOT_FOUND" for n in names]
            self.recipes["O"] += 1
            recipe = self.recipes["O"]
            self.outputs = (recipe, names, types, frequency)
            self.send(_frame("O", bytes([recipe]) + ",".join(types).encode()))
        elif kind == "I":
            names = [n for n in body.decode().split(",") if n]
            with c.lock:
                types = [rtde_type(n) or "NOT_FOUND" for n in names]
                types = ["IN_USE" if c.input_owner.get(n, self.ident) != self.ident else t
                         for n, t in zip(names, types)]
                self.recipes["I"] += 1
                recipe = self.recipes["I"]
                if "IN_USE" not in types and "NOT_FOUND" not in types:
                    c.input_owner.update({n: self.ident for n in names})
                    if "input_int_register_24" in names:
                        c.offset = 24
                    self.inputs[recipe] = (names, types)
            self.send(_frame("I", bytes([recipe if "IN_USE" not in types else 0]) + ",".join(types).encode()))
        elif kind == "S":
            self.streaming.set()
            self.send(_frame("S", b"\x01"))
        elif kind == "P":
            self.streaming.clear()
            self.send(_frame("P", b"\x01"))
        elif kind == "U":
            recipe = body[0]
            if recipe in self.inputs:
                names, types = self.inputs[recipe]
                values, offset = {}, 1
                for name, kind in zip(names, types):  # the client may send a recipe's leading fields only
                    size = struct.calcsize(">" + PACK[kind])
                    if offset + size > len(body):
                        break
                    values[name] = struct.unpack_from(">" + PACK[kind], body, offset)[0]
                    offset += size
                c.apply_inputs(values)

    def stream(self) -> None:
        while True:
            if not self.streaming.wait(0.1):
                if self.conn.fileno() < 0:
                    return
                continue
            recipe, names, types, frequency = self.outputs
            start = time.monotonic()
            with self.c.lock:
                outputs, values = self.c.outputs(), []
                for name in names:
                    value = self.c.output(outputs, name)
                    values += list(np.asarray(value).ravel()) if np.ndim(value) else [value]
            fmt = ">B" + "".join(PACK[t] for t in types)
            try:
                self.send(_frame("U", struct.pack(fmt, recipe, *[_cast(v) for v in values])))
            except OSError:
                return
            time.sleep(max(0.0, 1.0 / frequency - (time.monotonic() - start)))


def _cast(value):
    return bool(value) if isinstance(value, np.bool_) else (int(value) if isinstance(value, np.integer) else value)


def dashboard(controller: Controller, conn: socket.socket) -> None:
    c = controller
    conn.sendall(b"Connected: Universal Robots Dashboard Server\n")
    replies = {
        "polyscopeversion": lambda: "URSoftware 5.9.0.0 (emulated)" if c.e_series else "URSoftware 3.15.0 (emulated)",
        "get serial number": lambda: "20185500001",
        "robotmode": lambda: "Robotmode: RUNNING",
        "safetystatus": lambda: f"Safetystatus: {SAFETY_MODES[c.safety()[0]]}",
        "safetymode": lambda: f"Safetymode: {SAFETY_MODES[c.safety()[0]]}",
        "is in remote control": lambda: "true",
        "running": lambda: f"Program running: {str(c.runtime_state == 2).lower()}",
        "programstate": lambda: "PLAYING rtde_control" if c.runtime_state == 2 else "STOPPED rtde_control",
        "get loaded program": lambda: "Loaded program: rtde_control",
    }
    try:
        for raw in conn.makefile("rb"):
            command = raw.decode(errors="replace").strip()
            key = command.lower()
            with c.lock:
                if key == "stop":
                    c.stop_program()
                    reply = "Stopped"
                elif key == "play":
                    c.start_program()
                    reply = "Starting program"
                elif key == "unlock protective stop":
                    c.protective_stop, reply = False, "Protective stop releasing"
                elif key == "emulator protective stop":
                    c.protective_stop, reply = True, "Protective stop raised"
                elif key == "emulator emergency stop":
                    c.emergency_stop, reply = True, "Emergency stop pressed"
                elif key == "emulator release emergency stop":
                    c.emergency_stop, reply = False, "Emergency stop released"
                elif key in replies:
                    reply = replies[key]()
                else:
                    reply = f"could not understand: '{command}'"
            conn.sendall((reply + "\n").encode())
    except OSError:
        pass
    finally:
        conn.close()


def script_port(controller: Controller, conn: socket.socket) -> None:
    """Programs sent to the script port replace the running one; a client may keep the connection
    and send again (ur_rtde's reuploadScript does)."""
    conn.settimeout(1.0)
    program = b""
    try:
        while True:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                chunk = None
            if chunk == b"":
                break
            program += chunk or b""
            if b"def " in program and (program.rstrip().endswith(b"end") or chunk is None):
                with controller.lock:
                    controller.start_program()
                program = b""
    except OSError:
        pass
    finally:
        conn.close()


def robotiq_socket(controller: Controller, conn: socket.socket) -> None:
    """The Robotiq URCap's ASCII protocol: ``SET VAR n [VAR n ...]`` -> ``ack``, ``GET VAR`` -> ``VAR n``."""
    c = controller
    try:
        for raw in conn.makefile("rb"):
            words = raw.decode(errors="replace").split()
            with c.lock:
                if c.gripper_fault and words[:1] == ["SET"]:
                    reply = "?"
                elif len(words) >= 3 and words[0] == "SET" and len(words) % 2 == 1 and \
                        all(v in c.gripper and n.isdigit() for v, n in zip(words[1::2], words[2::2])):
                    c.gripper.update({v: int(n) for v, n in zip(words[1::2], words[2::2])})
                    if "POS" in words[1::2]:
                        c.log_event({"command": "gripper", "position": c.gripper["POS"],
                                     "activated": bool(c.gripper["ACT"])})
                    reply = "ack"
                elif len(words) == 2 and words[0] == "GET":
                    status = {"STA": 3 if c.gripper["ACT"] else 0, "PRE": c.gripper["POS"], "OBJ": 3, "FLT": 0}
                    value = {**c.gripper, **status}.get(words[1])
                    reply = f"{words[1]} {value}" if value is not None else "?"
                else:
                    reply = "?"
            conn.sendall((reply + "\n").encode())
    except OSError:
        pass
    finally:
        conn.close()


def listen(host: str, port: int, handler) -> threading.Thread:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(8)

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log", type=Path, help="append every command received here (JSON lines)")
    parser.add_argument("--e-series", action="store_true", help="report a 5.x controller (500 Hz RTDE)")
    args = parser.parse_args(argv)
    controller = Controller(args.log, args.e_series)
    connections = iter(range(1, 10**9))
    listen(args.host, 30004, lambda conn: RTDEConnection(controller, conn, next(connections)).serve())
    listen(args.host, 29999, lambda conn: dashboard(controller, conn))
    listen(args.host, 30003, lambda conn: script_port(controller, conn))
    listen(args.host, 63352, lambda conn: robotiq_socket(controller, conn))
    print(f"UR controller emulator on {args.host} (RTDE 30004, dashboard 29999, script 30003, Robotiq 63352)",
          flush=True)
    triggers = {kind: args.log.with_suffix(f".{kind}") for kind in ("protective_stop", "emergency_stop")} \
        if args.log else {}
    gripper_fault = args.log.with_suffix(".gripper_fault") if args.log else None
    period = 0.002
    try:
        while True:
            time.sleep(period)
            if gripper_fault is not None:
                controller.gripper_fault = gripper_fault.exists()
            for kind, trigger in triggers.items():
                if trigger.exists():
                    trigger.unlink()
                    with controller.lock:
                        setattr(controller, kind, True)
            controller.step(period)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
