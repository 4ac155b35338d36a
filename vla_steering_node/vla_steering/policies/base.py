"""The policy contract: observation -> action chunk, and its steered wrapper.

A backend subclasses :class:`Policy`: it declares its ``action_space`` and exposes
``model``, the ``nn.Module`` whose forward is one inference call and which the
steering hooks attach to, and implements :meth:`Policy.predict`.
:class:`SteeredPolicy` checks inputs, pins one steering plan for the whole
prediction (every decode or denoising step inside it), and checks outputs: a wrong
shape or a non-finite value is an error, values outside the action space's bounds are
clipped to them and counted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from vla_steering.dictionaries import InterventionDictionary
from vla_steering.steering import SteeringEngine, SteeringState


class ObservationError(ValueError):
    """An observation a policy must not act on."""


class PolicyOutputError(RuntimeError):
    """A policy produced an action that must not reach a robot (NaN, wrong shape)."""


@dataclass(frozen=True)
class ActionSpace:
    """What each action dimension means.

    Attributes:
        name: e.g. ``ee_delta_7d`` (LIBERO's OSC_POSE delta + gripper).
        dims: one name per dimension.
        low, high: the bounds every consumer clips to.
    """

    name: str
    dims: tuple[str, ...]
    low: float = -1.0
    high: float = 1.0

    @property
    def dim(self) -> int:
        return len(self.dims)


LIBERO_EE_DELTA = ActionSpace("ee_delta_7d", ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"))


@dataclass(frozen=True)
class Observation:
    """One control step's input.

    Attributes:
        images: camera name -> (H, W, 3) uint8 RGB, upright.
        state: robot state, e.g. LIBERO's [eef_pos(3), axis_angle(3), gripper_qpos(2)].
        instruction: the task in words.
    """

    images: Mapping[str, np.ndarray]
    state: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    instruction: str = ""

    def validate(self) -> None:
        if not self.images:
            raise ObservationError("observation has no camera image")
        for name, image in self.images.items():
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                shape = getattr(image, "shape", None)
                raise ObservationError(f"camera {name!r}: expected (H, W, 3) uint8 RGB, got {shape} "
                                       f"{getattr(image, 'dtype', type(image).__name__)}")
            if min(image.shape[:2]) < 8:
                raise ObservationError(f"camera {name!r}: image {image.shape[:2]} is too small")
        state = np.asarray(self.state)
        if state.ndim != 1 or not np.all(np.isfinite(state)):
            raise ObservationError(f"robot state must be a finite 1-D vector, got {state!r}")
        if not self.instruction.strip():
            raise ObservationError("instruction is empty")


@dataclass(frozen=True)
class ActionChunk:
    """(T, D) actions to execute in order, the steering applied to compute them, and how many of the
    policy's values lay outside the action space's bounds (clipped to them)."""

    actions: np.ndarray
    space: ActionSpace
    steering: SteeringState | None = None
    clipped: int = 0


class Policy(ABC):
    """A VLA backend. Subclasses set ``action_space`` and ``model``."""

    action_space: ActionSpace
    model: nn.Module

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None) and not isinstance(getattr(cls, "action_space", None),
                                                                          ActionSpace):
            raise TypeError(f"{cls.__name__} must declare an ActionSpace as class attribute action_space")

    batched = False  # True: predict_batch runs one batched forward, row i of every call being observation i

    @abstractmethod
    def predict(self, observation: Observation) -> np.ndarray:
        """(T, action_space.dim) float actions for a validated observation."""

    def predict_batch(self, observations: Sequence[Observation]) -> list[np.ndarray]:
        """:meth:`predict` for each observation; a backend that sets ``batched`` does it in one forward."""
        return [self.predict(observation) for observation in observations]

    def inert_layers(self) -> dict[tuple[str, int], str]:
        """(decoder stack, layer) -> why steering that layer's neurons cannot change the actions."""
        return {}

    def instruction_positions(self, observation: Observation) -> slice:
        """Where the instruction's tokens sit in the primary decoder stack's prefill (its first forward call
        for ``observation``), counted from the end of that call's sequence (negative), which a backend knows
        without counting its image tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not locate its instruction's tokens")


PLACEHOLDER = "§"  # one word no instruction starts or ends with: the prompt it makes differs only there


def instruction_span(with_instruction: Sequence[int], with_placeholder: Sequence[int], tail: int) -> slice:
    """The positions of an instruction's tokens, from a prompt's token ids with it and with :data:`PLACEHOLDER`.

    The tokens both share at the start and at the end are the template (a placeholder word keeps
    the template's spacing and punctuation as an instruction does); what differs is the
    instruction. ``tail`` is how many positions of the prefill follow ``with_instruction``'s last
    token; the slice counts from the prefill's end.
    """
    without = with_placeholder
    shared = min(len(with_instruction), len(without))
    start = next((i for i in range(shared) if with_instruction[i] != without[i]), shared)
    end = len(with_instruction)
    while end > start and len(with_instruction) - end < len(without) - start \
            and with_instruction[end - 1] == without[len(without) - (len(with_instruction) - end) - 1]:
        end -= 1
    if end <= start:
        raise ValueError("the instruction adds no token to the prompt")
    stop = end - len(with_instruction) - tail
    return slice(start - len(with_instruction) - tail, stop if stop < 0 else None)


def steer(policy: Policy, dictionary: InterventionDictionary, max_abs_strength: float = 100.0) -> SteeredPolicy:
    """The one way to steer a policy: an engine on its model that refuses concepts which cannot act."""
    engine = SteeringEngine(policy.model, dictionary, max_abs_strength, inert_layers=policy.inert_layers())
    return SteeredPolicy(policy, engine)


def steer_from_file(policy: Policy, dictionary_path: str | Path, max_abs_strength: float = 100.0) -> SteeredPolicy:
    """:func:`steer` with the dictionary file at ``dictionary_path``, its width checked against the policy's."""
    from vla_steering.anatomy import primary_stack
    from vla_steering.dictionaries import load_dictionary

    dictionary = load_dictionary(dictionary_path, primary_stack(policy.model).intermediate_size)
    return steer(policy, dictionary, max_abs_strength)


class SteeredPolicy:
    """A policy with an optional steering engine: the thing a control loop calls."""

    def __init__(self, policy: Policy, engine: SteeringEngine | None = None):
        self.policy = policy
        self.engine = engine

    def act(self, observation: Observation) -> ActionChunk:
        observation.validate()
        if self.engine is None:
            actions, state = self.policy.predict(observation), None
        else:
            with self.engine.applied() as state:
                actions = self.policy.predict(observation)
        return self._checked(actions, state)

    def act_rows(self, observations: Sequence[Observation], states: Sequence[SteeringState],
                 options: Sequence[Mapping[str, object]]) -> list[ActionChunk | Exception]:
        """Several clients' observations, each steered by its own state and predicted with its own options
        (policy attributes such as ``seed``; ones the policy lacks are ignored): each row's chunk, or the
        error that row alone met (its observation or state refused, its output not finite). A ``batched``
        backend without per-row options runs the rows in one forward."""
        out: list[ActionChunk | Exception | None] = [None] * len(observations)
        rows = []
        for i, observation in enumerate(observations):
            try:
                observation.validate()
                self.engine.validate_state(states[i])
                rows.append(i)
            except (ObservationError, KeyError, TypeError, ValueError) as error:
                out[i] = error
        per_row = any(hasattr(self.policy, name) for i in rows for name in options[i])
        if self.policy.batched and not per_row and len(rows) > 1:
            with self.engine.applied_rows([states[i] for i in rows]):
                predictions = self.policy.predict_batch([observations[i] for i in rows])
            for i, actions in zip(rows, predictions, strict=True):
                out[i] = self._checked_row(actions, states[i])
            return out
        for i in rows:
            for name, value in options[i].items():
                if hasattr(self.policy, name):
                    setattr(self.policy, name, value)
            try:
                with self.engine.applied_rows([states[i]]):
                    actions = self.policy.predict(observations[i])
            except (RuntimeError, ValueError) as error:
                out[i] = error
                continue
            out[i] = self._checked_row(actions, states[i])
        return out

    def _checked_row(self, actions: np.ndarray, state: SteeringState) -> ActionChunk | Exception:
        try:
            return self._checked(actions, state)
        except PolicyOutputError as error:
            return error

    def _checked(self, actions: np.ndarray, state: SteeringState | None) -> ActionChunk:
        actions = np.asarray(actions, np.float32)
        space = self.policy.action_space
        if actions.ndim != 2 or actions.shape[1] != space.dim or len(actions) == 0:
            raise PolicyOutputError(f"policy returned shape {actions.shape}; expected (T, {space.dim})")
        if not np.all(np.isfinite(actions)):
            raise PolicyOutputError("policy returned non-finite actions")
        outside = int(np.count_nonzero((actions < space.low) | (actions > space.high)))
        return ActionChunk(np.clip(actions, space.low, space.high), space, state, outside)
