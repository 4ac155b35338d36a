"""The process shape every node here shares: the executor spins in a background thread while the
main thread does the node's work; SIGINT / SIGTERM (rclpy's handlers) end both cleanly."""

from __future__ import annotations

import threading
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def _spin(executor: SingleThreadedExecutor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


def run(make_node: Callable[[], Node], work: Callable[[Node], None], startup_errors: tuple, name: str,
        cleanup: Callable[[Node], None] | None = None, args=None) -> None:
    """Create the node (exit 1 with the reason on ``startup_errors``), spin it, run ``work(node)`` in
    this thread until it returns or rclpy shuts down, then clean up and exit 0."""
    rclpy.init(args=args)
    try:
        node = make_node()
    except startup_errors as error:
        rclpy.logging.get_logger(name).fatal(f"cannot start: {error}")
        rclpy.try_shutdown()
        raise SystemExit(1) from None
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=_spin, args=(executor,), daemon=True)
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
        try:
            rclpy.try_shutdown()  # wakes the executor
        except RuntimeError:  # a signal handler shut the context down at the same moment
            pass
        spinner.join(timeout=5.0)
        executor.shutdown()
        if cleanup is not None:
            cleanup(node)
        node.destroy_node()
