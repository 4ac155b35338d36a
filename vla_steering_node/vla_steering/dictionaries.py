"""Intervention dictionaries: named concepts, each a set of FFN neurons or residual-stream directions.

Two YAML formats are read and written.

**Reference format** (the CoRL 2025 paper's files): each top-level key is a
concept; its value maps a *flat* neuron index ``layer * intermediate_size +
neuron`` to that neuron's top tokens, or is a plain list of flat indices, or is
empty (``blank: {}``). Only the indices steer. Reading it needs the model's
``intermediate_size`` (11008 for OpenVLA-7B, 16384 for pi0's Gemma-2B).

**Native format** (this project's)::

    format: vla-steer/v1
    model: {name: smollm2-135m, num_layers: 30, intermediate_size: 1536}
    concepts:
      up:
        description: neurons whose value vectors write 'up'
        mode: clamp          # clamp | scale | add
        strength: 4.0        # default strength; 0 means off
        stack: null          # decoder stack module path; null = the primary one
        neurons: {12: [345, 678], 20: [1]}   # layer -> neuron indices
        tokens: {18777: [' up', 'Up']}       # optional, flat index -> top tokens
      up_minus_down:
        mode: add            # a direction concept: always add
        directions: {20: [0.013, -0.2, ...]} # layer -> unit vector added to that layer's MLP output

Validation against a model (:meth:`InterventionDictionary.validate`) checks
every index is in range and says which concept and neuron is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

NATIVE_FORMAT = "vla-steer/v1"
MODES = ("clamp", "scale", "add")


class DictionaryError(ValueError):
    """A dictionary that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class Concept:
    """A named group of neurons and how to steer them.

    Attributes:
        name: the concept's name (a ROS parameter name component, so [A-Za-z0-9_]).
        neurons: (layer, neuron) pairs, sorted, unique.
        mode: ``clamp`` sets the neurons' activations (the input of down_proj) to the
            strength; ``scale`` multiplies them by it; ``add`` adds strength times the
            unit sum of the neurons' value vectors to the layer's MLP output.
        strength: default strength; 0 means the concept is off.
        description: free text.
        stack: the decoder stack (module path) the layers index into; None = primary.
        tokens: optional flat index -> top tokens, kept for people and round trips.
        directions: layer -> a residual-stream direction (unit length, the width of the stack); such a
            concept (mode ``add``, e.g. a contrastive direction) adds ``strength`` times it to that
            layer's MLP output.
    """

    name: str
    neurons: tuple[tuple[int, int], ...]
    mode: str = "clamp"
    strength: float = 0.0
    description: str = ""
    stack: str | None = None
    tokens: Mapping[int, list[str]] = field(default_factory=dict)
    directions: Mapping[int, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "a").isalnum() or not self.name.isascii():
            raise DictionaryError(f"concept name {self.name!r} must be non-empty ASCII letters, digits and '_'")
        if self.mode not in MODES:
            raise DictionaryError(f"concept {self.name!r}: mode {self.mode!r} is not one of {', '.join(MODES)}")
        object.__setattr__(self, "neurons", tuple(sorted({(int(layer), int(n)) for layer, n in self.neurons})))
        if self.directions:
            if self.mode != "add" or self.neurons:
                raise DictionaryError(f"concept {self.name!r}: a direction concept has mode 'add' and no neurons")
            unit = {}
            for layer, vector in self.directions.items():
                values = tuple(float(v) for v in vector)
                norm = sum(v * v for v in values) ** 0.5
                if not values or not norm > 0.0 or norm != norm:
                    raise DictionaryError(f"concept {self.name!r}: layer {layer}'s direction is empty, zero or NaN")
                unit[int(layer)] = tuple(v / norm for v in values)
            object.__setattr__(self, "directions", unit)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({layer for layer, _ in self.neurons} | set(self.directions)))

    @property
    def summary(self) -> str:
        """e.g. ``12 neurons in layers [20, 21]`` or ``a direction in layers [20]``."""
        what = "a direction" if self.directions else f"{len(self.neurons)} neurons"
        return f"{what} in layers {list(self.layers)}"

    @property
    def acts(self) -> bool:
        """Whether the concept has anything to steer (neurons or directions)."""
        return bool(self.neurons or self.directions)

    def by_layer(self) -> dict[int, list[int]]:
        grouped: dict[int, list[int]] = {}
        for layer, neuron in self.neurons:
            grouped.setdefault(layer, []).append(neuron)
        return grouped

    def flat_indices(self, intermediate_size: int) -> list[int]:
        return [layer * intermediate_size + neuron for layer, neuron in self.neurons]


@dataclass(frozen=True)
class InterventionDictionary:
    """Concepts by name, with the model shape they were made for (if known)."""

    concepts: Mapping[str, Concept]
    model_name: str = ""
    num_layers: int | None = None
    intermediate_size: int | None = None

    def __getitem__(self, name: str) -> Concept:
        try:
            return self.concepts[name]
        except KeyError:
            raise KeyError(f"unknown concept {name!r}; this dictionary has {sorted(self.concepts)}") from None

    def validate(self, stacks: Mapping[str | None, tuple[int, int]],
                 widths: Mapping[str | None, int] | None = None) -> None:
        """Check every neuron exists. ``stacks``: stack name (None = primary) -> (num_layers, intermediate_size);
        ``widths``: stack -> residual width, to check directions (unchecked without it)."""
        for concept in self.concepts.values():
            if concept.stack not in stacks:
                raise DictionaryError(
                    f"concept {concept.name!r} names decoder stack {concept.stack!r}; the model has "
                    f"{sorted(str(s) for s in stacks)}"
                )
            num_layers, width = stacks[concept.stack]
            for layer, neuron in concept.neurons:
                if not (0 <= layer < num_layers and 0 <= neuron < width):
                    raise DictionaryError(
                        f"concept {concept.name!r}: neuron (layer {layer}, index {neuron}) is outside the model "
                        f"({num_layers} layers x {width} neurons); was the dictionary made for another model?"
                    )
            for layer, vector in concept.directions.items():
                hidden = (widths or {}).get(concept.stack, len(vector))
                if not 0 <= layer < num_layers or len(vector) != hidden:
                    raise DictionaryError(
                        f"concept {concept.name!r}: a {len(vector)}-wide direction at layer {layer} does not fit the "
                        f"model ({num_layers} layers, residual width {hidden})")

    def with_concepts(self, *concepts: Concept) -> InterventionDictionary:
        merged = dict(self.concepts)
        merged.update({c.name: c for c in concepts})
        return replace(self, concepts=merged)


def random_control(dictionary: InterventionDictionary, concept: str, name: str, seed: int = 0) -> Concept:
    """A size-matched random-neuron control: per layer, as many random neurons as the concept has there.

    Neurons of the concept itself are excluded; the mode and strength are the concept's.
    """
    import numpy as np

    width = dictionary.intermediate_size
    if width is None:
        raise DictionaryError("a random control needs the dictionary's intermediate_size")
    source = dictionary[concept]
    rng = np.random.default_rng(seed)
    neurons = []
    for layer, members in source.by_layer().items():
        pool = np.setdiff1d(np.arange(width), members)
        neurons += [(layer, int(n)) for n in rng.choice(pool, size=len(members), replace=False)]
    return Concept(name=name, neurons=tuple(neurons), mode=source.mode, strength=source.strength,
                   description=f"size-matched random control for {concept!r} (seed {seed})", stack=source.stack)


def _split_flat(flat: int, intermediate_size: int) -> tuple[int, int]:
    return divmod(int(flat), intermediate_size)


def _reference_concept(name: str, value: object, intermediate_size: int) -> Concept:
    if value is None or value == {}:
        return Concept(name=name, neurons=())
    if isinstance(value, Mapping):
        flats = [int(k) for k in value]
        tokens = {int(k): [str(t) for t in (v or [])] for k, v in value.items()}
    elif isinstance(value, list):
        flats, tokens = [int(k) for k in value], {}
    else:
        raise DictionaryError(f"concept {name!r}: expected a mapping or a list of flat indices, got {value!r}")
    if any(f < 0 for f in flats):
        raise DictionaryError(f"concept {name!r}: negative neuron index in {flats}")
    return Concept(name=name, neurons=tuple(_split_flat(f, intermediate_size) for f in flats), tokens=tokens)


def _native_concept(name: str, body: Mapping) -> Concept:
    neurons = [(int(layer), int(n)) for layer, ns in (body.get("neurons") or {}).items() for n in ns]
    return Concept(
        name=name,
        neurons=tuple(neurons),
        mode=str(body.get("mode", "clamp")),
        strength=float(body.get("strength", 0.0)),
        description=str(body.get("description", "")),
        stack=body.get("stack"),
        tokens={int(k): [str(t) for t in v] for k, v in (body.get("tokens") or {}).items()},
        directions={int(layer): tuple(float(x) for x in v) for layer, v in (body.get("directions") or {}).items()},
    )


def parse_dictionary(data: object, intermediate_size: int | None = None) -> InterventionDictionary:
    """Build a dictionary from parsed YAML in either format."""
    if not isinstance(data, Mapping):
        raise DictionaryError("an intervention dictionary must be a YAML mapping")
    if data.get("format") == NATIVE_FORMAT:
        model = data.get("model") or {}
        concepts = {str(n): _native_concept(str(n), body or {}) for n, body in (data.get("concepts") or {}).items()}
        dictionary = InterventionDictionary(
            concepts=concepts,
            model_name=str(model.get("name", "")),
            num_layers=model.get("num_layers"),
            intermediate_size=model.get("intermediate_size"),
        )
        if intermediate_size is not None and dictionary.intermediate_size not in (None, intermediate_size):
            raise DictionaryError(
                f"dictionary was made for intermediate_size {dictionary.intermediate_size}, "
                f"the model has {intermediate_size}"
            )
        return dictionary
    if "format" in data:
        raise DictionaryError(f"unknown dictionary format {data['format']!r}; expected {NATIVE_FORMAT!r}")
    if intermediate_size is None:
        raise DictionaryError(
            "a reference-format dictionary keys neurons by flat index layer * intermediate_size + neuron; "
            "give the model's intermediate_size (11008 for OpenVLA-7B, 16384 for pi0's Gemma-2B)"
        )
    concepts = {str(n): _reference_concept(str(n), v, intermediate_size) for n, v in data.items()}
    return InterventionDictionary(concepts=concepts, intermediate_size=intermediate_size)


def load_dictionary(path: str | Path, intermediate_size: int | None = None) -> InterventionDictionary:
    path = Path(path)
    if not path.is_file():
        raise DictionaryError(f"intervention dictionary {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DictionaryError(f"{path} is not valid YAML: {error}") from error
    try:
        return parse_dictionary(data, intermediate_size)
    except DictionaryError as error:
        raise DictionaryError(f"{path}: {error}") from error


def to_native(dictionary: InterventionDictionary) -> dict:
    concepts = {}
    for c in dictionary.concepts.values():
        body: dict = {"description": c.description, "mode": c.mode, "strength": c.strength, "stack": c.stack}
        body["neurons"] = {layer: ns for layer, ns in c.by_layer().items()}
        if c.tokens:
            body["tokens"] = {int(k): list(v) for k, v in c.tokens.items()}
        if c.directions:
            body["directions"] = {layer: list(v) for layer, v in c.directions.items()}
        concepts[c.name] = body
    model = {"name": dictionary.model_name, "num_layers": dictionary.num_layers,
             "intermediate_size": dictionary.intermediate_size}
    return {"format": NATIVE_FORMAT, "model": model, "concepts": concepts}


def to_reference(dictionary: InterventionDictionary) -> dict:
    width = dictionary.intermediate_size
    if width is None:
        raise DictionaryError("writing the reference format needs the dictionary's intermediate_size")
    out: dict = {}
    for c in dictionary.concepts.values():
        if c.directions:
            raise DictionaryError(f"concept {c.name!r} is a direction; the reference format holds neurons only")
        out[c.name] = {flat: list(c.tokens.get(flat, [])) for flat in c.flat_indices(width)}
    return out


def save_dictionary(dictionary: InterventionDictionary, path: str | Path, fmt: str = "native") -> Path:
    if fmt not in ("native", "reference"):
        raise ValueError(f"format must be 'native' or 'reference', got {fmt!r}")
    data = to_native(dictionary) if fmt == "native" else to_reference(dictionary)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
