"""Set another node's parameters through its SetParameters service (what `ros2 param set` calls)."""

from __future__ import annotations

from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.task import Future


def parameter_value(value) -> ParameterValue:
    if isinstance(value, bool):
        return ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    if isinstance(value, int):
        return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    if isinstance(value, float):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(value))


class ParameterClient:
    def __init__(self, node: Node, target: str):
        self.client = node.create_client(SetParameters, f"{target.rstrip('/')}/set_parameters")

    def set_async(self, values: dict) -> Future:
        """Send one SetParameters request (the node applies the set atomically); returns its future."""
        request = SetParameters.Request(parameters=[Parameter(name=k, value=parameter_value(v))
                                                    for k, v in values.items()])
        return self.client.call_async(request)
