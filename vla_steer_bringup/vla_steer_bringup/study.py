"""What an evaluation study is: its config (a YAML file), the grid it expands to, and each episode's key.

A config names a suite, tasks, init states, seeds and conditions. A condition is a baseline, a
set of strengths (``strengths: {up: 2.0}``) or a *live* change (``live: {at_step: 16, strengths:
{up: 2.0}}``). A ``sweep:`` section writes the grid instead of the list::

    sweep:
      concepts: [up, down]
      strengths: [1.0, 2.0, 4.0]
      random_controls: 2   # per concept: size-matched random-neuron controls, steered alike

which adds ``up_1.0`` ... ``down_4.0`` and ``up_random0_1.0`` ... (the controls' concepts are made
from the dictionary by :func:`vla_steering.dictionaries.random_control`, seeded by their index, and
written beside the results: :func:`study_dictionary`). Every (task, init state, condition, seed)
is one :class:`Episode`, keyed by (suite, task, init state, condition, seed); its bag is named
after the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from vla_steering.dictionaries import load_dictionary, random_control, save_dictionary
from vla_steering_node.share import share_file

PACKAGE = "vla_steer_bringup"  # the presets are in its share
BASELINE = "baseline"
SIM_SEED = 7  # the simulation bridge's default seed


@dataclass(frozen=True)
class Condition:
    name: str
    strengths: dict = field(default_factory=dict)
    live_at_step: int | None = None
    live_strengths: dict = field(default_factory=dict)

    @property
    def concept(self) -> str:
        active = {**self.strengths, **self.live_strengths}
        return next(iter(active), "")

    @property
    def strength(self) -> float:
        active = {**self.strengths, **self.live_strengths}
        return float(next(iter(active.values()), 0.0))


@dataclass(frozen=True)
class Sweep:
    """The grid concept × strength (× matched random controls) as conditions."""

    concepts: tuple[str, ...]
    strengths: tuple[float, ...]
    random_controls: int = 0

    @classmethod
    def from_yaml(cls, data: dict) -> Sweep:
        unknown = set(data) - {"concepts", "strengths", "random_controls"}
        if unknown:
            raise ValueError(f"sweep: unknown keys {sorted(unknown)} (concepts, strengths, random_controls)")
        concepts, strengths = data.get("concepts") or [], data.get("strengths") or []
        if not concepts or not strengths:
            raise ValueError("sweep: needs concepts and strengths lists")
        controls = int(data.get("random_controls", 0))
        if controls < 0:
            raise ValueError("sweep: random_controls must be >= 0")
        return cls(tuple(str(c) for c in concepts), tuple(float(s) for s in strengths), controls)

    def controls(self) -> dict[str, tuple[str, int]]:
        """Control concept name -> (the concept it matches, its seed)."""
        return {f"{c}_random{i}": (c, i) for c in self.concepts for i in range(self.random_controls)}

    def conditions(self) -> list[Condition]:
        steered = [*self.concepts, *self.controls()]
        return [Condition(f"{concept}_{strength}", {concept: strength}) for concept in steered
                for strength in self.strengths]


@dataclass(frozen=True, order=True)
class Episode:
    """One episode of a study, by its key."""

    suite: str
    task: int
    init_state: int
    condition: str
    seed: int

    @property
    def name(self) -> str:
        """The bag's (and the result's) name."""
        return f"{self.suite}_t{self.task}_i{self.init_state}_{self.condition}_s{self.seed}"


@dataclass(frozen=True)
class EvalConfig:
    suite: str
    tasks: list[int]
    init_states: list[int]
    conditions: list[Condition]
    seeds: list[int] = field(default_factory=lambda: [SIM_SEED])  # the simulation's and the policy's seed
    sweep: Sweep | None = None
    max_steps: int = 0  # 0 = the suite's limit
    image_size: int = 128
    horizon_steps: int = 20
    policy: str = "demo"
    checkpoint: str = ""
    dictionary: str = ""
    video: bool = False
    episode_timeout_s: float = 1800.0
    namespace: str = ""  # every node of the run under it (e.g. robot1)

    @classmethod
    def load(cls, path: str | Path) -> EvalConfig:
        """A config file, or an installed preset's name (``eval_ci``)."""
        path = Path(path)
        if not path.exists() and path.parent == Path("."):
            path = share_file(PACKAGE, f"config/{path.with_suffix('.yaml').name}")
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: an evaluation config is a mapping")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        conditions = []
        for c in data.pop("conditions", None) or []:
            live = c.get("live") or {}
            conditions.append(Condition(str(c["name"]), dict(c.get("strengths") or {}), live.get("at_step"),
                                        dict(live.get("strengths") or {})))
        sweep = Sweep.from_yaml(data.pop("sweep")) if data.get("sweep") else None
        data.pop("sweep", None)
        if sweep is not None:
            conditions += sweep.conditions()
        names = [c.name for c in conditions]
        if BASELINE not in names:
            raise ValueError("an evaluation needs a condition named 'baseline' to compare against")
        if len(set(names)) != len(names):
            raise ValueError(f"condition names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        seeds = [int(s) for s in data.pop("seeds", None) or [SIM_SEED]]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds}")
        return cls(conditions=conditions, seeds=seeds, sweep=sweep, **data)

    def episodes(self) -> list[Episode]:
        """Every episode of the study, in a fixed order (task, init state, seed, condition)."""
        return [Episode(self.suite, t, i, c.name, s) for t in self.tasks for i in self.init_states
                for s in self.seeds for c in self.conditions]

    def condition(self, name: str) -> Condition:
        return next(c for c in self.conditions if c.name == name)


def study_dictionary(config: EvalConfig, out: Path) -> str:
    """The dictionary the episodes load: the config's, with the sweep's random controls added
    (written to ``out/study_dictionary.yaml``); without controls, the config's as it is."""
    if config.sweep is None or not config.sweep.random_controls:
        return config.dictionary
    from vla_steering_node.node import default_dictionary

    source = config.dictionary or default_dictionary()
    dictionary = load_dictionary(source)  # the node checks its width against the policy
    concepts = dict(dictionary.concepts)
    for name, (concept, seed) in config.sweep.controls().items():
        if concept not in concepts:
            raise ValueError(f"sweep: concept {concept!r} is not in {source}")
        concepts[name] = random_control(dictionary, concept, name, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "study_dictionary.yaml"
    save_dictionary(replace(dictionary, concepts=concepts), path)
    return str(path)
