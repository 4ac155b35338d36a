"""The process shape every node here shares: the executor spins in a background thread while the
main thread does the node's work; the first SIGINT / SIGTERM ends both cleanly. An
exception in a callback is logged with its traceback, reported on /diagnostics (level ERROR) and
handed to the node's ``on_error``; the executor goes on serving every other callback (it never
dies silently under a live process).
Once shutting down, further SIGINT / SIGTERM (a double Ctrl-C, the SIGINT ``ros2 launch`` forwards
to a group already stopping) are noted and do not cut the cleanup short; SIGKILL still ends it."""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from collections.abc import Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from vla_steering import contract
from vla_steering_node.conversions import diagnostics_message, qos_profile


def _spin(executor: SingleThreadedExecutor, node: Node, on_error: Callable[[Node, Exception], None] | None,
          stopping: threading.Event) -> None:
    diagnostics = node.create_publisher(DiagnosticArray, contract.DIAGNOSTICS.name, qos_profile(contract.DIAGNOSTICS))
    failures = 0
    while True:
        try:
            executor.spin()
            return
        except ExternalShutdownException:
            return
        except Exception as error:  # noqa: BLE001 - a callback failed: report it and keep serving the rest
            if stopping.is_set() or not rclpy.ok():
                return  # never spin again once the process is shutting down
            node.get_logger().error(f"a callback failed and was skipped: {type(error).__name__}: {error}\n"
                                    + "".join(traceback.format_exception(error)))
            failures += 1
            try:
                diagnostics.publish(diagnostics_message(
                    f"{node.get_name()}: callback error", node.get_fully_qualified_name(), DiagnosticStatus.ERROR,
                    f"a callback failed and was skipped: {type(error).__name__}: {error}",
                    {"callback_errors": failures, "error_type": type(error).__name__},
                    node.get_clock().now().to_msg()))
            except RuntimeError:  # the context went down meanwhile: nothing left to report to
                return
            if on_error is not None:
                on_error(node, error)


def run(make_node: Callable[[], Node], work: Callable[[Node], None], startup_errors: tuple, name: str,
        cleanup: Callable[[Node], None] | None = None, args=None,
        on_error: Callable[[Node, Exception], None] | None = None) -> None:
    """Create the node (exit 1 with the reason on ``startup_errors``), spin it, run ``work(node)`` in
    this thread until it returns or rclpy shuts down, then clean up and exit 0. ``on_error(node, error)``
    hears of every exception a callback raised (the executor itself goes on). A node process's
    shell: once it returns, SIGINT / SIGTERM are ignored so that the exit itself is never cut short."""
    stopping = threading.Event()
    _install_signal_handlers(name, stopping)
    rclpy.init(args=args)
    try:
        node = make_node()
    except startup_errors as error:
        rclpy.logging.get_logger(name).fatal(f"cannot start: {error}")
        rclpy.try_shutdown()
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # stopped while starting
        rclpy.try_shutdown()
        return
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=_spin, args=(executor, node, on_error, stopping), daemon=True)
    spinner.start()
    try:
        work(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if rclpy.ok():
            raise
        # a publish raced the shutdown a signal started ("context is invalid"): a clean exit
    finally:
        stopping.set()
        try:
            rclpy.try_shutdown()  # wakes the executor
        except RuntimeError:  # a signal handler shut the context down at the same moment
            pass
        spinner.join(timeout=5.0)
        executor.shutdown()
        if cleanup is not None:
            cleanup(node)
        node.destroy_node()
        if threading.current_thread() is threading.main_thread():  # done: a late signal must not kill the exit
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _install_signal_handlers(name: str, stopping: threading.Event) -> None:
    """SIGINT / SIGTERM: the first ends the work (KeyboardInterrupt), later ones are only noted so
    the cleanup (closing a bag, stopping a robot) runs to its end. Installed before ``rclpy.init``,
    so rclpy's own handlers (which shut the context down) chain to these."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum: int, frame) -> None:
        if not stopping.is_set():
            stopping.set()
            raise KeyboardInterrupt
        print(f"[{name}] {signal.Signals(signum).name} while shutting down: finishing first (SIGKILL aborts)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
