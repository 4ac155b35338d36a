"""Set another node's parameters together, all or none, through its SetParametersAtomically service.

(``ros2 param set`` calls the SetParameters service with one parameter; a batch sent there is
applied parameter by parameter, so one invalid item would not stop the others.)"""

from __future__ import annotations

from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParametersAtomically
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
        self.client = node.create_client(SetParametersAtomically, f"{target.rstrip('/')}/set_parameters_atomically")

    def set_async(self, values: dict) -> Future:
        """Send one atomic set (applied all together, or refused with one reason); returns its future."""
        request = SetParametersAtomically.Request(parameters=[Parameter(name=k, value=parameter_value(v))
                                                              for k, v in values.items()])
        return self.client.call_async(request)
