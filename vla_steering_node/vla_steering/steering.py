"""Live steering: PyTorch hooks that override FFN neuron activations.

Hooks sit on ``mlp.down_proj`` of every layer a concept touches:

* a forward *pre*-hook edits the down_proj input (the neuron activations,
  (B, T, I)) for ``clamp`` (set to the strength, the reference method) and
  ``scale`` (multiply by the strength);
* a forward hook adds a precomputed (D,) direction to the down_proj output
  for ``add``: strength times the unit sum of the concept's value vectors.

Neither adds a matmul. They run on every token position of every forward
call: prefill, each decode step, each denoising step.

Thread safety: strengths are set from any thread (:class:`SteeringControls`);
each change builds a new, immutable :class:`SteeringPlan` and swaps one
reference. A forward call reads the plan once, in a pre-hook on the root module,
and every layer of that call uses it, so a call is never torn.
:meth:`SteeringEngine.applied` pins one plan across several calls (a whole
``generate`` or a whole denoising loop); :meth:`SteeringEngine.applied_rows`
pins one plan per batch row (a policy server batching requests steered
differently: row i of every call gets plan i).
With no concept active the hooks return at once: outputs are bit-identical to
the unsteered model.

One engine per model: a second one is refused until the first is removed
(``remove()``, or leaving it as a context manager), which detaches its hooks.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from vla_steering.anatomy import DecoderStack, find_decoder_stacks, primary_stack
from vla_steering.dictionaries import MODES, DictionaryError, InterventionDictionary

ENGINE_MODES = ("dictionary",) + MODES  # "dictionary": each concept's own mode


@dataclass(frozen=True)
class SteeringState:
    """What is applied: reported with every action."""

    enabled: bool
    mode: str
    strengths: Mapping[str, float]  # active concepts only
    version: int

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.strengths)


@dataclass(frozen=True)
class LayerPlan:
    clamp_index: torch.Tensor | None = None  # (n,) long
    clamp_value: torch.Tensor | None = None  # (n,)
    scale_index: torch.Tensor | None = None
    scale_value: torch.Tensor | None = None
    add_vector: torch.Tensor | None = None  # (D,)


@dataclass(frozen=True)
class SteeringPlan:
    state: SteeringState
    layers: Mapping[tuple[str, int], LayerPlan] = field(default_factory=dict)


_ENGINES: weakref.WeakKeyDictionary[nn.Module, SteeringEngine] = weakref.WeakKeyDictionary()  # one per model


class SteeringControls:
    """The strengths, enabled flag and mode of a dictionary's concepts: validated, changed atomically.

    Each change makes one new immutable :class:`SteeringState`. A :class:`SteeringEngine` applies its
    controls to a model; a client of a remote policy keeps its own and sends the state with every
    observation (:mod:`vla_steering.policy_server`).
    """

    def __init__(self, dictionary: InterventionDictionary, max_abs_strength: float = 100.0):
        self.dictionary = dictionary
        self.max_abs_strength = float(max_abs_strength)
        self._lock = threading.Lock()
        self._strengths = {name: 0.0 for name in dictionary.concepts}
        self._enabled = True
        self._mode = "dictionary"
        self._version = 0
        for name, concept in dictionary.concepts.items():
            self.validate_strength(name, concept.strength)
            self._strengths[name] = float(concept.strength)
        self._publish(self._make_state())

    @property
    def concepts(self) -> tuple[str, ...]:
        return tuple(self.dictionary.concepts)

    @property
    def state(self) -> SteeringState:
        return self._state

    def update(self, strengths: Mapping[str, float] | None = None, enabled: bool | None = None,
               mode: str | None = None) -> SteeringState:
        """Change strengths (0 = off), the enabled flag and the mode together, atomically.

        Everything is validated first; on any error nothing changes.
        """
        for name, value in (strengths or {}).items():
            self.validate_strength(name, value)
        if mode is not None:
            validate_mode(mode)
        with self._lock:
            self._strengths.update({name: float(v) for name, v in (strengths or {}).items()})
            if enabled is not None:
                self._enabled = bool(enabled)
            if mode is not None:
                self._mode = mode
            self._version += 1
            self._publish(self._make_state())
            return self.state

    def set_strengths(self, strengths: Mapping[str, float]) -> SteeringState:
        return self.update(strengths=strengths)

    def set_strength(self, concept: str, strength: float) -> SteeringState:
        return self.update(strengths={concept: strength})

    def set_enabled(self, enabled: bool) -> SteeringState:
        return self.update(enabled=enabled)

    def set_mode(self, mode: str) -> SteeringState:
        return self.update(mode=mode)

    def validate_strength(self, concept: str, strength: float) -> None:
        """Raise (KeyError, TypeError, ValueError) with a reason if this strength would be refused."""
        if concept not in self.dictionary.concepts:
            raise KeyError(f"unknown concept {concept!r}; known concepts: {sorted(self.dictionary.concepts)}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise TypeError(f"strength of {concept!r} must be a number, got {type(strength).__name__}")
        if not abs(float(strength)) <= self.max_abs_strength:  # also refuses NaN
            raise ValueError(
                f"strength {strength} for {concept!r} is outside [-{self.max_abs_strength}, {self.max_abs_strength}]"
            )

    def validate_state(self, state: SteeringState) -> None:
        """Raise (KeyError, TypeError, ValueError) if these controls would refuse ``state`` (another's controls')."""
        validate_mode(state.mode)
        for name, value in state.strengths.items():
            self.validate_strength(name, value)

    def _make_state(self) -> SteeringState:
        active = {n: s for n, s in self._strengths.items() if s != 0.0 and self.dictionary[n].acts}
        return SteeringState(self._enabled, self._mode, dict(active) if self._enabled else {}, self._version)

    def _publish(self, state: SteeringState) -> None:
        self._state = state


def validate_mode(mode: str) -> None:
    if mode not in ENGINE_MODES:
        raise ValueError(f"steering mode {mode!r} is not one of {', '.join(ENGINE_MODES)}")


class SteeringEngine(SteeringControls):
    """Steer a loaded model with the concepts of an intervention dictionary.

    Args:
        model: the module whose forward is one inference call (a causal LM, a VLA).
        dictionary: the concepts; validated against the model here.
        max_abs_strength: strengths outside [-max, max] are refused.
        inert_layers: (stack name, layer) -> why that layer's neurons cannot change the output;
            a concept touching one is refused (a policy's :meth:`~vla_steering.policies.Policy.inert_layers`).
    """

    def __init__(self, model: nn.Module, dictionary: InterventionDictionary, max_abs_strength: float = 100.0,
                 inert_layers: Mapping[tuple[str, int], str] | None = None):
        self.model = model
        primary = primary_stack(model)
        self._stacks: dict[str | None, DecoderStack] = {s.name: s for s in find_decoder_stacks(model)}
        self._stacks[None] = primary
        check_fits(model, dictionary)
        self.dictionary = dictionary
        self._refuse_inert(inert_layers or {})
        if model in _ENGINES:
            raise ValueError("this model already has a steering engine; remove() it first (two engines on one "
                             "model would both act on every call)")
        self._local = threading.local()
        self._add_directions = self._unit_directions()
        super().__init__(dictionary, max_abs_strength)
        self._handles = [model.register_forward_pre_hook(self._pin_for_call)]
        for stack_name, layer in self._touched_layers():
            down = self._stacks[stack_name].down_proj(layer)
            key = (self._stacks[stack_name].name, layer)
            self._handles.append(down.register_forward_pre_hook(self._make_input_hook(key)))
            self._handles.append(down.register_forward_hook(self._make_output_hook(key)))
        _ENGINES[model] = self

    # ----------------------------------------------------------------- control
    @property
    def state(self) -> SteeringState:
        return self._plan.state

    def plan_for(self, state: SteeringState) -> SteeringPlan:
        """The plan that applies ``state`` (another's controls', e.g. a remote client's), validated here first."""
        self.validate_state(state)
        return self._build_plan(state)

    @contextmanager
    def applied(self) -> Iterator[SteeringState]:
        """Pin the current plan for every forward call inside (e.g. a whole generate())."""
        plan = self._plan
        with self._pinned((plan,)):
            yield plan.state

    @contextmanager
    def applied_rows(self, states: Sequence[SteeringState]) -> Iterator[None]:
        """Pin one plan per batch row for every forward call inside: row i is steered by ``states[i]``.

        A call whose batch is not ``len(states)`` rows is an error (a backend that folds its
        batch into another dimension cannot be steered per row).
        """
        plans = tuple(self.plan_for(state) for state in states)
        with self._pinned(plans):
            yield

    def remove(self) -> None:
        """Detach every hook; the model is as it was (and may be given another engine)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if _ENGINES.get(self.model) is self:
            del _ENGINES[self.model]

    def __enter__(self) -> SteeringEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    # ---------------------------------------------------------------- internals
    def _publish(self, state: SteeringState) -> None:
        self._plan = self._build_plan(state)

    def _refuse_inert(self, inert_layers: Mapping[tuple[str, int], str]) -> None:
        for concept in self.dictionary.concepts.values():
            stack = self._stacks[concept.stack].name
            for layer in concept.layers:
                if (stack, layer) in inert_layers:
                    raise DictionaryError(f"concept {concept.name!r} uses layer {layer} of {stack}, which cannot "
                                          f"act: {inert_layers[(stack, layer)]}")

    def _touched_layers(self) -> list[tuple[str | None, int]]:
        touched = {(c.stack, layer) for c in self.dictionary.concepts.values() for layer in c.layers}
        return sorted(touched, key=lambda k: (str(k[0]), k[1]))

    def _unit_directions(self) -> dict[tuple[str, int, str], torch.Tensor]:
        """For ``add``: per (stack, layer, concept), the unit sum of the concept's value vectors (or its direction)."""
        directions = {}
        with torch.no_grad():
            for concept in self.dictionary.concepts.values():
                stack = self._stacks[concept.stack]
                for layer, vector in concept.directions.items():
                    weight = stack.down_proj(layer).weight
                    directions[(stack.name, layer, concept.name)] = torch.tensor(vector, dtype=weight.dtype,
                                                                                 device=weight.device)
                for layer, neurons in concept.by_layer().items():
                    weight = stack.down_proj(layer).weight  # (D, I)
                    direction = weight[:, neurons].sum(dim=1)
                    directions[(stack.name, layer, concept.name)] = direction / direction.norm().clamp_min(1e-12)
        return directions

    def _build_plan(self, state: SteeringState) -> SteeringPlan:
        if not state.active:
            return SteeringPlan(state)
        clamp: dict[tuple[str, int], dict[int, float]] = {}
        scale: dict[tuple[str, int], dict[int, float]] = {}
        add: dict[tuple[str, int], torch.Tensor] = {}
        for name, strength in state.strengths.items():
            concept = self.dictionary[name]
            stack = self._stacks[concept.stack]
            mode = concept.mode if state.mode == "dictionary" or concept.directions else state.mode
            for layer in concept.layers:
                key, neurons = (stack.name, layer), concept.by_layer().get(layer, [])
                if mode == "clamp":
                    clamp.setdefault(key, {}).update({n: strength for n in neurons})
                elif mode == "scale":
                    factors = scale.setdefault(key, {})
                    for n in neurons:
                        factors[n] = factors.get(n, 1.0) * strength
                else:
                    vector = strength * self._add_directions[(stack.name, layer, name)]
                    add[key] = add[key] + vector if key in add else vector
        layers = {}
        for key in set(clamp) | set(scale) | set(add):
            weight = self._stacks[key[0]].down_proj(key[1]).weight
            layers[key] = LayerPlan(
                *_index_values(clamp.get(key), weight),
                *_index_values(scale.get(key), weight),
                add.get(key),
            )
        return SteeringPlan(state, layers)

    @contextmanager
    def _pinned(self, plans: tuple[SteeringPlan, ...]) -> Iterator[None]:
        previous = getattr(self._local, "pinned", None)
        self._local.pinned = plans
        try:
            yield
        finally:
            self._local.pinned = previous

    def _pin_for_call(self, module: nn.Module, args: tuple) -> None:
        self._local.call_plan = (self._plan,)

    def _current(self, key: tuple[str, int]) -> tuple[LayerPlan | None, ...]:
        """This call's plan for one layer: one entry for every row, or one per row; () if none acts on it
        (the unsteered case, on every forward: one lookup)."""
        plans = getattr(self._local, "pinned", None) or getattr(self._local, "call_plan", None) or (self._plan,)
        if len(plans) == 1:
            layer = plans[0].layers.get(key)
            return () if layer is None else (layer,)
        rows = tuple(plan.layers.get(key) for plan in plans)
        return rows if any(row is not None for row in rows) else ()

    def _make_input_hook(self, key: tuple[str, int]):
        def edit_activations(module: nn.Module, args: tuple):
            rows = self._current(key)
            if not rows or all(plan is None or (plan.clamp_index is None and plan.scale_index is None)
                               for plan in rows):
                return None
            x = args[0]  # (B, T, I): act_fn(gate_proj(h)) * up_proj(h)
            _check_rows(rows, x)
            if x.requires_grad:
                x = x.clone()
            for row, plan in enumerate(rows):
                if plan is None:
                    continue
                view = x if len(rows) == 1 else x[row]
                if plan.scale_index is not None:
                    view[..., plan.scale_index] *= plan.scale_value
                if plan.clamp_index is not None:
                    view[..., plan.clamp_index] = plan.clamp_value
            return (x, *args[1:])

        return edit_activations

    def _make_output_hook(self, key: tuple[str, int]):
        def add_direction(module: nn.Module, args: tuple, output: torch.Tensor):
            rows = self._current(key)
            if not rows or all(plan is None or plan.add_vector is None for plan in rows):
                return None
            if len(rows) == 1:
                return output + rows[0].add_vector  # (B, T, D) + (D,)
            _check_rows(rows, output)
            zero = torch.zeros(output.shape[-1], dtype=output.dtype, device=output.device)
            vectors = torch.stack([zero if plan is None or plan.add_vector is None else plan.add_vector
                                   for plan in rows])  # (B, D)
            return output + vectors.view(len(rows), *[1] * (output.ndim - 2), -1)

        return add_direction


def _check_rows(rows: tuple, x: torch.Tensor) -> None:
    if len(rows) > 1 and x.shape[0] != len(rows):
        raise RuntimeError(f"steering is pinned for {len(rows)} batch rows, but a call has a batch of {x.shape[0]}")


def _index_values(values: dict[int, float] | None, like: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    if not values:
        return None, None
    index = torch.tensor(sorted(values), dtype=torch.long, device=like.device)
    value = torch.tensor([values[i] for i in sorted(values)], dtype=like.dtype, device=like.device)
    return index, value


def check_fits(model: nn.Module, dictionary: InterventionDictionary) -> None:
    """Raise DictionaryError if the dictionary's neurons are not in the model."""
    stacks: dict[str | None, tuple[int, int]] = {
        s.name: (s.num_layers, s.intermediate_size) for s in find_decoder_stacks(model)
    }
    p = primary_stack(model)
    stacks[None] = (p.num_layers, p.intermediate_size)
    widths: dict[str | None, int] = {s.name: s.hidden_size for s in find_decoder_stacks(model)}
    widths[None] = p.hidden_size
    dictionary.validate(stacks, widths)
