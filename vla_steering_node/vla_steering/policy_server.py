"""One steered policy served to several steering nodes, their observations batched: a Ray actor and its client.

On a GPU one model serving many simulators beats one model per simulator: its memory is held
once and a batch of observations costs little more than one. :class:`PolicyServer` loads the
policy and its dictionary the one way a node does (``make_policy`` + ``steer_from_file``); each request
carries the client's observation, its steering state and its live options (``seed``), and is
answered with the chunk the client's own policy would have computed. Requests that arrive within
``wait_s`` of the first waiting one, up to ``max_batch``, are predicted together
(:meth:`~vla_steering.policies.SteeredPolicy.act_rows`: one forward, row i steered by request
i's state, on a backend that batches; one after another on the others). An invalid observation
or a non-finite output fails its own request only.

:class:`RemoteSteeredPolicy` is what a node holds instead of a local policy: the same ``act``,
``engine`` (the steering controls its parameters set; validated against the served dictionary)
and ``policy`` (the live options). It joins the Ray cluster at ``address`` as a driver.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace

from vla_steering.policies import ObservationError, PolicyOutputError
from vla_steering.policies.base import ActionChunk, Observation
from vla_steering.steering import SteeringControls, SteeringState

NAMESPACE = "vla_steer"  # the Ray namespace servers are named in
CALL_TIMEOUT_S = 600.0  # a real checkpoint's prediction on a CPU takes minutes at worst


@dataclass(frozen=True)
class PolicySpec:
    """What a server loads: the steering node's policy parameters."""

    policy: str = "demo"
    checkpoint: str = ""
    device: str = "cpu"
    dictionary: str = ""  # the intervention dictionary's path
    max_abs_strength: float = 20.0
    options: Mapping[str, object] | None = None  # loader options (``unnorm_key``, ``dtype``, ...)


class PolicyServer:
    """A Ray actor (async: requests queue while a batch is predicted) serving one steered policy."""

    def __init__(self, spec: PolicySpec, max_batch: int = 8, wait_s: float = 0.005):
        from vla_steering.policies import make_policy, steer_from_file

        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0, got {max_batch}, {wait_s}")
        policy = make_policy(spec.policy, spec.checkpoint, spec.device, **dict(spec.options or {}))
        self.spec, self.max_batch, self.wait_s = spec, max_batch, wait_s
        self.steered = steer_from_file(policy, spec.dictionary, spec.max_abs_strength)
        self.batch_sizes: Counter[int] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._serving: asyncio.Task | None = None

    def describe(self) -> dict:
        """What a client needs: the policy's name, its dictionary and the strength limit."""
        return {"policy": self.spec.policy, "dictionary": self.steered.engine.dictionary,
                "max_abs_strength": self.steered.engine.max_abs_strength}

    async def until_stopped(self) -> None:
        """Never returns: whoever waits on it hears at once when the server dies."""
        await asyncio.Event().wait()

    def stats(self) -> dict[int, int]:
        """How many batches of each size were predicted."""
        return dict(self.batch_sizes)

    async def act(self, observation: Observation, state: SteeringState, options: Mapping[str, object]) -> ActionChunk:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # the first request (of this event loop): start serving the queue
            self._loop, self._queue = loop, asyncio.Queue()
            self._serving = loop.create_task(self._serve())  # kept: the loop holds only a weak reference
        answer = loop.create_future()
        await self._queue.put((observation, state, dict(options), answer))
        return await answer

    async def _serve(self) -> None:
        """Predict the waiting requests, one batch at a time (the policy's options are set per row)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            try:
                results = await loop.run_in_executor(None, self._predict, batch)
            except Exception as error:  # the batch's forward failed: every request of it hears why
                results = [error] * len(batch)
            for (*_, answer), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)

    def _predict(self, batch: list) -> list[ActionChunk | Exception]:
        observations, states, options, _ = zip(*batch, strict=True)
        self.batch_sizes[len(batch)] += 1
        return self.steered.act_rows(observations, states, options)


def start_server(name: str, spec: PolicySpec, max_batch: int, wait_s: float = 0.005, num_gpus: float = 0.0):
    """Start a named :class:`PolicyServer` on the Ray cluster this process is connected to; its handle, once
    the policy is loaded. It takes no CPU from the scheduler (the workers hold those), ``num_gpus`` GPUs."""
    import ray

    actor = ray.remote(num_cpus=0, num_gpus=num_gpus, max_restarts=0)(PolicyServer)
    server = actor.options(name=name, namespace=NAMESPACE).remote(spec, max_batch, wait_s)
    ray.get(server.describe.remote())  # raises the loading error here, not at the first observation
    return server


class RemoteSteeredPolicy:
    """A steered policy served by a :class:`PolicyServer` (named ``name`` on the cluster at ``address``)."""

    def __init__(self, name: str, address: str | None, options: Mapping[str, object]):
        import ray

        if not ray.is_initialized():
            _check_reachable(address)
            try:
                ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, RuntimeError) as error:
                raise ValueError(f"cannot join the Ray cluster at {address or 'auto'}: {error}") from error
        try:
            self.server = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError as error:
            raise ValueError(f"no policy server {name!r} on the Ray cluster at {address or 'auto'}") from error
        info = ray.get(self.server.describe.remote(), timeout=CALL_TIMEOUT_S)
        self.name = info["policy"]
        self.engine = SteeringControls(info["dictionary"], info["max_abs_strength"])
        self.policy = SimpleNamespace(**options)  # the live options, sent with every observation

    def act(self, observation: Observation) -> ActionChunk:
        import ray
        from ray.exceptions import RayError

        observation.validate()
        try:
            return ray.get(self.server.act.remote(observation, self.engine.state, vars(self.policy)),
                           timeout=CALL_TIMEOUT_S)
        except (ObservationError, PolicyOutputError):  # the server's refusal of this observation (or its chunk)
            raise
        except RayError as error:  # the server died, or timed out
            raise RuntimeError(f"the policy server failed: {error}") from error


def _check_reachable(address: str | None) -> None:
    """Refuse an address nothing answers at, before ``ray.init`` (which waits minutes for a dead one)."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as error:
        raise ValueError(f"nothing answers at the Ray address {address!r}: {error}") from error
