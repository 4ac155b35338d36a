"""The process shape every node here shares: the executor spins in a background thread while the
main thread does the node's work; SIGINT / SIGTERM (rclpy's handlers) end both cleanly. An
exception in a callback is logged with its traceback and handed to the node's ``on_error``; the
executor goes on serving every other callback (it never dies silently under a live process)."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def _spin(executor: SingleThreadedExecutor, node: Node, on_error: Callable[[Node, Exception], None] | None,
          stopping: threading.Event) -> None:
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
            if on_error is not None:
                on_error(node, error)


def run(make_node: Callable[[], Node], work: Callable[[Node], None], startup_errors: tuple, name: str,
        cleanup: Callable[[Node], None] | None = None, args=None,
        on_error: Callable[[Node, Exception], None] | None = None) -> None:
    """Create the node (exit 1 with the reason on ``startup_errors``), spin it, run ``work(node)`` in
    this thread until it returns or rclpy shuts down, then clean up and exit 0. ``on_error(node, error)``
    hears of every exception a callback raised (the executor itself goes on)."""
    rclpy.init(args=args)
    try:
        node = make_node()
    except startup_errors as error:
        rclpy.logging.get_logger(name).fatal(f"cannot start: {error}")
        rclpy.try_shutdown()
        raise SystemExit(1) from None
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stopping = threading.Event()
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
