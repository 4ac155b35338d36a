"""The ur_rtde session in a child process that the driver can always kill.

ur_rtde's control interface runs its own reconnect loop when the controller goes away, and a call
made then blocks inside the bindings. So the driver never calls ur_rtde in its own process: a
:class:`ControllerLink` starts ``python -m ur5_driver.controller_link`` with one end of a socket
pair, and every call (read the state, servoL, servoStop, unlock, gripper) is a message with a
deadline. A call that fails, or does not answer in time, raises :class:`LinkDown` and the child is
killed; the driver then reconnects with a fresh child. When the child dies the controller sees
its RTDE connection drop and the control script's watchdog stops the arm. A command the
controller refuses because its control program is not running raises :class:`ProgramNotRunning`
and keeps the link.

The child (:class:`RobotSession`) owns the receive interface, and unless it is a dry run the
control interface, the dashboard client and the gripper. It refuses control calls while the
receive stream is down, and exits when the driver's end of the pair closes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path

from ur5_driver.gripper import GripperConfig, GripperWorker, RobotiqSocket


class LinkDown(RuntimeError):
    """The controller cannot be reached through this link (failed, timed out, or closed)."""


class ProgramNotRunning(RuntimeError):
    """The controller is reachable but its control program is not running (stopped on the pendant,
    by its RTDE watchdog, or by a fault), so it refused a command."""


class RobotSession:
    """The ur_rtde interfaces for one connection to one controller (lives in the child)."""

    def __init__(self, ip: str, control: bool, gripper: GripperConfig):
        import rtde_receive

        self.receive = rtde_receive.RTDEReceiveInterface(ip)
        self.control = self.dashboard = self.io = self.robotiq = self.gripper = None
        self.ip, self.gripper_config = ip, gripper
        if not control:
            return
        import dashboard_client
        import rtde_control

        self.control = rtde_control.RTDEControlInterface(ip)
        self.dashboard = dashboard_client.DashboardClient(ip)
        self.dashboard.connect()
        if gripper.interface == "robotiq_socket":
            self.robotiq = RobotiqSocket(ip, gripper.port)  # unreachable at start: a start-up error
            self.gripper = GripperWorker(self._move_robotiq)
        elif gripper.interface == "digital_output":
            import rtde_io

            self.io = rtde_io.RTDEIOInterface(ip)
            self.gripper = GripperWorker(self._set_output)

    def _check(self) -> None:
        if not self.receive.isConnected():
            raise LinkDown("the RTDE data stream stopped")
        if self.control is not None and not self.control.isConnected():
            raise LinkDown("the control interface lost its connection")

    def state(self) -> dict:
        self._check()
        r = self.receive
        return {"q": list(r.getActualQ()), "tcp": list(r.getActualTCPPose()), "bits": r.getSafetyStatusBits(),
                "robot_mode": r.getRobotMode(), "safety_mode": r.getSafetyMode(),
                "runtime_state": r.getRuntimeState(), "speed_scaling": r.getSpeedScaling(),
                "gripper_error": self.gripper.error if self.gripper is not None else ""}

    def _accepted(self, accepted: bool, command: str) -> None:
        if not accepted:
            raise ProgramNotRunning(f"{command} refused: the control program is not running")

    def servo_l(self, pose: list[float], period: float, lookahead: float, gain: float) -> None:
        self._check()
        self._accepted(self.control.servoL(pose, 0.0, 0.0, period, lookahead, gain), "servoL")

    def servo_stop(self) -> None:
        self._check()
        self._accepted(self.control.servoStop(), "servoStop")

    def arm_watchdog(self, frequency_hz: float) -> None:
        """The program's RTDE watchdog on its command register (the driver arms it on its first tick,
        so that connecting the gripper or anything else cannot starve it)."""
        self._check()
        self._accepted(self.control.setWatchdog(frequency_hz), "setWatchdog")

    def kick_watchdog(self) -> None:
        """Update the command register the program's RTDE watchdog watches (every idle tick)."""
        self._check()
        self._accepted(self.control.kickWatchdog(), "kickWatchdog")

    def restart_program(self) -> None:
        """Upload the control program again (its watchdog went with the old one)."""
        self._check()
        self._accepted(self.control.reuploadScript(), "reuploadScript")

    def unlock_protective_stop(self) -> str:
        """The dashboard's reply (the driver never asks in a dry run, which has no dashboard)."""
        return self.dashboard.unlockProtectiveStop()

    def grip(self, command: int) -> None:
        """Hand the command to the gripper's worker thread and return at once."""
        self._check()
        if self.gripper is not None:
            self.gripper.submit(command)

    def _move_robotiq(self, position: int) -> None:
        try:
            if self.robotiq is None:  # the socket broke on an earlier command: open a new one
                self.robotiq = RobotiqSocket(self.ip, self.gripper_config.port)
            self.robotiq.move(position)
        except (OSError, RuntimeError):
            if self.robotiq is not None:
                self.robotiq.close()
            self.robotiq = None
            raise

    def _set_output(self, level: int) -> None:
        config = self.gripper_config
        set_output = self.io.setStandardDigitalOut if config.output_bank == "standard" else self.io.setToolDigitalOut
        if not set_output(config.output_pin, bool(level)):
            raise RuntimeError(f"the controller refused {config.output_bank} digital output {config.output_pin}")

    def close(self) -> None:
        if self.control is not None and self.receive.isConnected() and self.control.isConnected():
            self.control.servoStop()
            self.control.stopScript()


def serve(conn: Connection, session: RobotSession) -> None:
    """Answer the driver's calls until its end of the pair closes (or it asks to close)."""
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", getattr(session, method)(*args)))
        except ProgramNotRunning as error:
            conn.send(("not_running", str(error)))
        except Exception as error:  # noqa: BLE001 - every failure goes back to the driver, which decides
            conn.send(("error", f"{type(error).__name__}: {error}"))
        if method == "close":
            return


class ControllerLink:
    """The driver's end: calls into a child :class:`RobotSession`, each with a deadline."""

    def __init__(self, ip: str, control: bool, gripper: GripperConfig,
                 call_timeout: float = 0.5, connect_timeout: float = 10.0):
        parent, child = socket.socketpair()
        options = json.dumps({"ip": ip, "control": control, "gripper": asdict(gripper)})
        # the child runs this very copy of ur5_driver, wherever the driver's came from
        here = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (here, os.environ.get("PYTHONPATH")))))
        self.process = subprocess.Popen([sys.executable, "-m", "ur5_driver.controller_link", "--fd",
                                         str(child.fileno()), "--options", options], pass_fds=(child.fileno(),),
                                        env=env)
        child.close()
        self.conn = Connection(parent.detach())
        self.call_timeout = call_timeout
        self.lock = threading.Lock()
        self._answer(connect_timeout, "connect")

    def _answer(self, timeout: float, method: str):
        try:
            ready = self.conn.poll(timeout)
            status, value = self.conn.recv() if ready else ("error", f"no answer in {timeout:.2f} s")
        except (EOFError, OSError):
            status, value = "error", "the controller link process ended"
        if status == "not_running":
            raise ProgramNotRunning(value)  # the link itself is fine
        if status != "ok":
            self.kill()
            raise LinkDown(f"{method}: {value}")
        return value

    def call(self, method: str, *args, timeout: float | None = None):
        with self.lock:
            if self.process.poll() is not None:
                raise LinkDown(f"{method}: the controller link is closed")
            try:
                self.conn.send((method, args))
            except OSError:
                self.kill()
                raise LinkDown(f"{method}: the controller link process ended") from None
            return self._answer(self.call_timeout if timeout is None else timeout, method)

    # the typed calls the servo loop makes (ur5_driver.servo.Controller)
    def state(self) -> dict:
        return self.call("state")

    def servo_l(self, pose: list[float], period: float, lookahead: float, gain: float) -> None:
        self.call("servo_l", pose, period, lookahead, gain)

    def servo_stop(self) -> None:
        self.call("servo_stop")

    def arm_watchdog(self, frequency_hz: float) -> None:
        self.call("arm_watchdog", frequency_hz)

    def kick_watchdog(self) -> None:
        self.call("kick_watchdog")

    def grip(self, command: int) -> None:
        self.call("grip", command)

    def kill(self) -> None:
        """End the child at once (it may be blocked inside ur_rtde)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.conn.close()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the arm and the control script if the controller answers, then end the child."""
        try:
            self.call("close", timeout=timeout)
        except LinkDown:
            return  # already killed
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


def main(argv: list[str] | None = None) -> None:
    # The driver owns this process's life (it asks it to close, or kills it; its end closing ends
    # this one). A Ctrl-C reaches the whole terminal group: ignored here, so the driver can still
    # stop the arm through this session instead of finding it gone (and no traceback is printed).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parser = argparse.ArgumentParser(description="the ur_rtde session of ur5_driver (started by the driver)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--options", required=True)
    args = parser.parse_args(argv)
    options = json.loads(args.options)
    conn = Connection(args.fd)
    try:
        session = RobotSession(options["ip"], options["control"], GripperConfig(**options["gripper"]))
    except Exception as error:  # noqa: BLE001 - the driver reports why it could not connect
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ok", None))
    serve(conn, session)


if __name__ == "__main__":
    main()
