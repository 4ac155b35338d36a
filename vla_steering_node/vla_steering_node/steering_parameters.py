"""Steering as ROS 2 parameters: declare one per concept, validate sets, apply them atomically.

Parameters (all live):

* ``steering.enabled`` (bool): all concepts on/off;
* ``steering.mode`` (string): ``dictionary`` (each concept's own mode), ``clamp``, ``scale``, ``add``;
* ``steering.<concept>.strength`` (double, range [-max_abs_strength, max_abs_strength]; 0 = off).

Ranges and types are enforced by rclpy from the descriptors; this module adds the checks
rclpy cannot do and turns accepted sets into one engine update.
"""

from __future__ import annotations

from collections.abc import Sequence

from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.parameter import Parameter

from vla_steering.steering import ENGINE_MODES, SteeringEngine

PREFIX = "steering."
ENABLED = "steering.enabled"
MODE = "steering.mode"


def strength_name(concept: str) -> str:
    return f"{PREFIX}{concept}.strength"


def declarations(engine: SteeringEngine) -> list[tuple[str, object, ParameterDescriptor]]:
    """(name, default, descriptor) for every steering parameter of this engine."""
    limit = engine.max_abs_strength
    out = [
        (ENABLED, True, ParameterDescriptor(type=ParameterType.PARAMETER_BOOL,
                                            description="Apply steering (all concepts) on the next inference")),
        (MODE, "dictionary", ParameterDescriptor(
            type=ParameterType.PARAMETER_STRING,
            description="dictionary: each concept's own mode; clamp: set activations to the strength; "
                        "scale: multiply them; add: add strength x the concept's unit value-vector direction",
            additional_constraints=f"one of {', '.join(ENGINE_MODES)}")),
    ]
    for name in engine.concepts:
        concept = engine.dictionary[name]
        description = concept.description or f"concept {name!r}"
        out.append((strength_name(name), float(concept.strength), ParameterDescriptor(
            type=ParameterType.PARAMETER_DOUBLE,
            description=f"{description} ({concept.summary}, mode {concept.mode}); 0 = off",
            floating_point_range=[FloatingPointRange(from_value=-limit, to_value=limit, step=0.0)])))
    return out


def _concept_of(name: str) -> str | None:
    if name.startswith(PREFIX) and name.endswith(".strength"):
        return name[len(PREFIX): -len(".strength")]
    return None


def validate(engine: SteeringEngine, parameters: Sequence[Parameter]) -> SetParametersResult:
    """Refuse the whole set on the first invalid steering parameter, with its reason."""
    for p in parameters:
        concept = _concept_of(p.name)
        if concept is not None:
            try:
                engine.validate_strength(concept, p.value)
            except (KeyError, TypeError, ValueError) as error:
                return SetParametersResult(successful=False, reason=f"{p.name}: {error}")
        elif p.name == MODE and p.value not in ENGINE_MODES:
            return SetParametersResult(successful=False,
                                       reason=f"{MODE} must be one of {', '.join(ENGINE_MODES)}, got {p.value!r}")
    return SetParametersResult(successful=True)


def apply(engine: SteeringEngine, parameters: Sequence[Parameter]) -> None:
    """Apply accepted steering parameters: one set is one atomic engine update."""
    strengths = {c: float(p.value) for p in parameters if (c := _concept_of(p.name)) is not None}
    enabled = [bool(p.value) for p in parameters if p.name == ENABLED]
    mode = [str(p.value) for p in parameters if p.name == MODE]
    engine.update(strengths=strengths, enabled=enabled[-1] if enabled else None, mode=mode[-1] if mode else None)
