"""Record what a policy's decoder does while it runs: per-neuron activation statistics, residual streams.

A neuron's activation is its entry of the input of ``down_proj`` (see :mod:`vla_steering.anatomy`).
:class:`ActivationCapture` puts a forward hook on each chosen layer's ``down_proj``: a forward
hook receives the input the layer was actually called with, i.e. after any steering hook changed
it, whatever order the hooks were registered in — with a concept clamped at ``s``, its neurons are
captured as ``s``. Memory is bounded by the statistics, not by the run: per layer and neuron the
running maximum of ``|a|``, the index of the observation where it occurred, and the running sum
and count for the mean, over every position of every forward call (a flow-matching policy's
denoising steps and a decoder's generated tokens included).

Observations are numbered by the caller (:meth:`ActivationCapture.observation`), so that the
maximising observation of any neuron can be found again (a frame in a bag).

:class:`ResidualCapture` keeps, per observation and chosen layer, the residual stream after that
layer (the decoder layer's output): at the last position of each forward call (a decoder's
decision token) or averaged over all positions, averaged over the observation's calls; or
averaged over the instruction's tokens of the prefill (the observation's first call; where they
are is the policy's :meth:`vla_steering.policies.Policy.instruction_positions`). One ``(D,)``
vector per observation and layer. It needs the decoder layers' own forward: SmolVLA's VLM runs
its layers piecewise, so only :class:`ActivationCapture` sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vla_steering.anatomy import DecoderStack, primary_stack


@dataclass(frozen=True)
class NeuronStats:
    """Activation statistics of every neuron of some layers of one decoder stack.

    Attributes:
        stack: the decoder stack's module path.
        layers: the layer indices, one row each below.
        max_abs: (L, I) the largest ``|activation|`` seen.
        argmax_observation: (L, I) the observation number where it was seen (-1: none seen).
        mean: (L, I) the mean activation over every position seen.
        observations: how many observations were run.
    """

    stack: str
    layers: tuple[int, ...]
    max_abs: np.ndarray
    argmax_observation: np.ndarray
    mean: np.ndarray
    observations: int

    def strongest(self, count: int) -> list[tuple[int, int, float]]:
        """The ``count`` neurons of largest ``max_abs``: (layer, neuron, max_abs), strongest first."""
        flat = np.argsort(-self.max_abs, axis=None, kind="stable")[:count]
        rows, neurons = np.unravel_index(flat, self.max_abs.shape)
        return [(self.layers[r], int(n), float(self.max_abs[r, n])) for r, n in zip(rows, neurons, strict=True)]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez_compressed(path, stack=self.stack, layers=np.asarray(self.layers), max_abs=self.max_abs,
                            argmax_observation=self.argmax_observation, mean=self.mean,
                            observations=self.observations)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NeuronStats:
        data = np.load(path)
        return cls(str(data["stack"]), tuple(int(x) for x in data["layers"]), data["max_abs"],
                   data["argmax_observation"], data["mean"], int(data["observations"]))


class _LayerAccumulator:
    def __init__(self, width: int):
        self.max_abs = torch.zeros(width, dtype=torch.float64)
        self.argmax = torch.full((width,), -1, dtype=torch.long)
        self.total = torch.zeros(width, dtype=torch.float64)
        self.count = 0

    def add(self, activations: torch.Tensor, observation: int) -> None:
        flat = activations.detach().reshape(-1, activations.shape[-1]).to("cpu", torch.float64)
        peak = flat.abs().amax(dim=0)
        better = peak > self.max_abs
        self.max_abs = torch.where(better, peak, self.max_abs)
        self.argmax = torch.where(better, torch.full_like(self.argmax, observation), self.argmax)
        self.total += flat.sum(dim=0)
        self.count += flat.shape[0]


class ActivationCapture:
    """Forward hooks on ``down_proj`` of ``layers`` (default: all) of a decoder stack (default: the primary).

    Use as a context manager (the hooks are removed on exit), numbering each observation::

        with ActivationCapture(policy.model) as capture:
            for i, observation in enumerate(observations):
                with capture.observation(i):
                    steered.act(observation)
        stats = capture.stats()
    """

    def __init__(self, model: nn.Module, stack: str | None = None, layers: Sequence[int] | None = None,
                 position: str = "all"):
        if position not in ("all", "last"):
            raise ValueError(f"position must be 'all' or 'last', got {position!r}")
        self.position = position
        self.stack: DecoderStack = primary_stack(model, stack)
        self.layers = tuple(range(self.stack.num_layers)) if layers is None else tuple(int(x) for x in layers)
        bad = [x for x in self.layers if not 0 <= x < self.stack.num_layers]
        if bad:
            raise ValueError(f"{self.stack.name} has layers 0..{self.stack.num_layers - 1}; not {bad}")
        self._accumulators = {x: _LayerAccumulator(self.stack.intermediate_size) for x in self.layers}
        self._current: int | None = None
        self._seen: set[int] = set()
        self._handles = [self.stack.down_proj(x).register_forward_hook(self._hook(x)) for x in self.layers]

    def _hook(self, layer: int):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self._current is not None:
                activations = args[0][:, -1:] if self.position == "last" and args[0].dim() == 3 else args[0]
                self._accumulators[layer].add(activations, self._current)

        return record

    @contextmanager
    def observation(self, index: int) -> Iterator[None]:
        """Attribute the forward calls inside to observation ``index``; calls outside are not recorded."""
        self._current = int(index)
        try:
            yield
        finally:
            self._seen.add(self._current)
            self._current = None

    def stats(self) -> NeuronStats:
        acc = [self._accumulators[x] for x in self.layers]
        mean = [a.total / max(a.count, 1) for a in acc]
        return NeuronStats(self.stack.name, self.layers, torch.stack([a.max_abs for a in acc]).numpy(),
                           torch.stack([a.argmax for a in acc]).numpy(), torch.stack(mean).numpy(), len(self._seen))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> ActivationCapture:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


POSITIONS = ("last", "mean", "instruction")


class ResidualCapture:
    """Forward hooks on decoder layers ``layers`` of a stack: one residual-stream vector per observation and layer.

    Args:
        position: ``last`` (the final position of each call: the token the decision is read at),
            ``mean`` (all positions) or ``instruction`` (the instruction's tokens in the prefill, given
            to :meth:`observation` as a slice).
    """

    def __init__(self, model: nn.Module, layers: Sequence[int], stack: str | None = None, position: str = "last"):
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        self.stack: DecoderStack = primary_stack(model, stack)
        self.layers = tuple(int(x) for x in layers)
        bad = [x for x in self.layers if not 0 <= x < self.stack.num_layers]
        if bad or not self.layers:
            raise ValueError(f"{self.stack.name} has layers 0..{self.stack.num_layers - 1}; not {bad or 'none'}")
        self.position = position
        self._calls: dict[int, list[torch.Tensor]] = {}
        self._vectors: list[torch.Tensor] = []  # (L, D) per observation
        self._recording = False
        self._span: slice | None = None
        self._handles = [self.stack.layers[x].register_forward_hook(self._hook(x)) for x in self.layers]

    def _hook(self, layer: int):
        def record(module: nn.Module, args: tuple, output) -> None:
            if not self._recording or (self.position == "instruction" and layer in self._calls):
                return  # the instruction's tokens are read in the prefill only
            hidden = (output[0] if isinstance(output, tuple) else output).detach()
            if self.position == "instruction":
                wanted = len(range(*self._span.indices(hidden.shape[1])))
                tokens = hidden[:, self._span]
                if wanted == 0 or tokens.shape[1] != wanted or -self._span.start > hidden.shape[1]:
                    raise ValueError(f"instruction positions {self._span} do not fit this call's "
                                     f"{hidden.shape[1]} positions")
                vector = tokens.mean(dim=1)
            else:
                vector = hidden[:, -1] if self.position == "last" else hidden.mean(dim=1)
            self._calls.setdefault(layer, []).append(vector.mean(dim=0).to("cpu", torch.float64))

        return record

    @contextmanager
    def observation(self, instruction: slice | None = None) -> Iterator[None]:
        """Record the forward calls inside as the next observation (``instruction``: where its tokens are)."""
        if (self.position == "instruction") != (instruction is not None):
            raise ValueError("the instruction's positions are given exactly when position is 'instruction'")
        self._calls, self._recording, self._span = {}, True, instruction
        try:
            yield
        finally:
            self._recording = False
        missing = [x for x in self.layers if x not in self._calls]
        if missing:
            raise ValueError(f"layers {missing} of {self.stack.name} did not run as modules for this observation: "
                             f"a backend that runs its layers piecewise (SmolVLA's VLM) has no residual capture")
        self._vectors.append(torch.stack([torch.stack(self._calls[x]).mean(dim=0) for x in self.layers]))

    def vectors(self) -> np.ndarray:
        """(observations, layers, D)."""
        if not self._vectors:
            raise ValueError("no observation was recorded")
        return torch.stack(self._vectors).numpy()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> ResidualCapture:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


def record_residuals(steered, observations: Iterable, layers: Sequence[int], stack: str | None = None,
                     position: str = "last", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Run ``steered`` (a :class:`vla_steering.policies.SteeredPolicy`) on ``observations``: their residual
    streams (N, layers, D) at ``position`` and the first action of each chunk (N, A)."""
    from tqdm import tqdm

    actions = []
    with ResidualCapture(steered.policy.model, layers, stack, position) as capture:
        for observation in tqdm(observations, desc="residual streams", unit="obs", disable=not progress):
            span = steered.policy.instruction_positions(observation) if position == "instruction" else None
            with capture.observation(span):
                actions.append(steered.act(observation).actions[0])
        return capture.vectors(), np.asarray(actions, np.float64)
